"""The TOML config contract: the PRODUCT.md example parses; each bad key is named in ConfigError."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import pytest

from edgewarm.config import (
    EXAMPLE_SECRET,
    Config,
    ca_file_cautions,
    config_path_from,
    file_cautions,
    load_config,
    parse_config,
    reload_changes,
    reload_refusal,
    restart_only_changes,
)
from edgewarm.errors import ConfigError
from edgewarm.models import Tier
from edgewarm.testing.lab import self_signed

# Verbatim from PRODUCT.md, "Configuration contract".
PRODUCT_EXAMPLE = """\
listen = "127.0.0.1:8080"
store = "sqlite:///var/lib/edgewarm/edgewarm.db"   # or "postgresql://user@host:5432/db"

[limits]                  # JD's defaults; each may also be set on one user to override it
urls_per_call = 100
dirs_per_call = 5
urls_per_day = 2000       # prefetch and refresh URLs together
dirs_per_day = 50

[[users]]
name = "jcloud_00"
secret = "e7a31b1c5ea0efa9aa2f29c6559f7d61"
domains = ["www.example.test", "*.img.example.test"]
urls_per_day = 1000000    # this user's own quota

[[nodes]]
name = "shield-1"
url = "http://127.0.0.1:18090"
tier = "shield"          # default "edge"

[[nodes]]
name = "edge-1"
url = "http://127.0.0.1:18081"
"""


def example() -> dict[str, Any]:
    return tomllib.loads(PRODUCT_EXAMPLE)


def refused_key(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.key


def test_product_example_parses() -> None:
    """PRODUCT.md's config example parses into the values it states."""
    config = parse_config(example())
    assert config.listen == "127.0.0.1:8080"
    assert config.listen_host == "127.0.0.1"
    assert config.listen_port == 8080
    assert config.store == "sqlite:///var/lib/edgewarm/edgewarm.db"
    assert (config.limits.urls_per_call, config.limits.dirs_per_call) == (100, 5)
    assert (config.limits.urls_per_day, config.limits.dirs_per_day) == (2000, 50)
    user = config.user("jcloud_00")
    assert user is not None
    assert user.secret == "e7a31b1c5ea0efa9aa2f29c6559f7d61"
    assert user.domains == ("www.example.test", "*.img.example.test")
    assert [(n.name, n.url, n.tier) for n in config.nodes] == [
        ("shield-1", "http://127.0.0.1:18090", Tier.SHIELD),
        ("edge-1", "http://127.0.0.1:18081", Tier.EDGE),
    ]
    assert [n.name for n in config.shields()] == ["shield-1"]
    assert config.node("edge-1") is config.nodes[1]
    assert config.user("nobody") is None


def test_an_empty_document_gives_the_defaults() -> None:
    """Every key is optional; the defaults are JD's limits and Asia/Shanghai."""
    config = parse_config({})
    assert config.limits.urls_per_call == 100
    assert config.limits.urls_per_day == 2000
    assert config.api.timezone == "Asia/Shanghai"
    assert config.api.language == "en"
    assert config.users == ()
    assert config.nodes == ()


def test_a_connect_timeout_not_below_read_timeout_is_accepted_with_a_caution() -> None:
    """The defaults raise no caution; connect_timeout at or above read_timeout is valid, but a node that drops
    connection attempts could not be held down: one caution names both values and why."""
    assert parse_config({}).engine.cautions() == []
    assert parse_config({"engine": {"connect_timeout": 29.9}}).engine.cautions() == []
    (caution,) = parse_config({"engine": {"connect_timeout": 30, "read_timeout": 30}}).engine.cautions()
    assert caution.startswith("[engine] connect_timeout (30 s) is not below read_timeout (30 s): ")
    assert "not held down" in caution


def test_secret_is_not_shown_in_repr() -> None:
    """A user's secret never appears in its repr (and so not in logs)."""
    config = parse_config(example())
    assert "e7a31b1c5ea0efa9aa2f29c6559f7d61" not in repr(config)


@pytest.mark.parametrize("url", ["http://[::1]:18081", "https://[0:0:0:0:0:0:0:1]", "http://[::ffff:127.0.0.1]:8"])
def test_an_ipv6_node_address_in_brackets_is_taken(url: str) -> None:
    data = example()
    data["nodes"][1]["url"] = url
    assert parse_config(data).nodes[1].url == url


def test_node_url_is_normalised_without_trailing_slash() -> None:
    """A node URL given with a trailing slash is stored as scheme://host:port."""
    data = example()
    data["nodes"][1]["url"] = "http://127.0.0.1:18081/"
    assert parse_config(data).nodes[1].url == "http://127.0.0.1:18081"


def test_unknown_top_level_key_is_named() -> None:
    """A misspelt top-level key is refused and named."""
    data = example()
    data["listne"] = "127.0.0.1:1"
    assert refused_key(data) == "listne"


def test_unknown_key_in_a_node_is_named_with_its_index() -> None:
    """A misspelt key in the second node is named nodes[1].tierr, and its table by its number counted from 1 and
    its name (a reload tester counted nodes[3] from 1 and landed on the wrong node)."""
    data = example()
    data["nodes"][1]["tierr"] = "shield"
    assert refused_key(data) == "nodes[1].tierr"
    name = data["nodes"][1]["name"]
    with pytest.raises(ConfigError) as refused:
        parse_config(data)
    assert str(refused.value) == f"nodes[1].tierr: unknown key (the [[nodes]] table number 2, name {name!r})"
    del data["nodes"][1]["name"]  # no name to give: its number alone
    with pytest.raises(ConfigError, match=r"the \[\[nodes\]\] table number 2\)$"):
        parse_config(data)


def test_unknown_key_in_limits_is_named() -> None:
    """A misspelt limit is named limits.<key>."""
    data = example()
    data["limits"]["url_per_call"] = 5
    assert refused_key(data) == "limits.url_per_call"


@pytest.mark.parametrize("name", [" carol", "carol ", "dan\x00x", "a\tb", "a\nb"])
def test_a_user_name_no_call_could_give_is_refused(name: str) -> None:
    """The API strips the name it is sent, and a NUL cannot be stored on PostgreSQL: such users passed
    check-config and were refused every call (code 20), or answered -1 "the store is unavailable"."""
    data = example()
    data["users"][0]["name"] = name
    assert refused_key(data) == "users[0].name"


@pytest.mark.parametrize("name", ["a b", "用户", "+&=", "é x"])
def test_a_user_name_with_inner_spaces_or_any_script_is_taken(name: str) -> None:
    data = example()
    data["users"][0]["name"] = name
    assert parse_config(data).users[0].name == name


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1:18081",
        "127.0.0.1:18081",
        "http://127.0.0.1:18081/cache",
        "http://127.0.0.1:18081/?x=1",
        "http://user@127.0.0.1:18081",
        "http://:password@127.0.0.1:18081",
        "http://@127.0.0.1:18081",
        "http://127.0.0.1:99999",
        "http://",
        "https://" + "a" * 64 + ".example.net",
        "http://edge..example.net",
        # An IPv6 zone id, text after the brackets, no address in them: each failed every request as "internal
        # error: ValueError" (an IPv6 tester's).
        "http://[::1%25lo]:18081",
        "http://[fe80::1%25eth0]:18081",
        "http://[fe80::1%eth0]:18081",
        "http://[v1.fe]:18081",
        "http://[::1]x:18081",
        "http://[::1]]:18081",
    ],
)
def test_bad_node_url_is_named(url: str) -> None:
    """A node URL with another scheme, a path, a query, user info, a bad port, no host or a host that is not
    a name (a label over 63 characters, or empty) is refused."""
    data = example()
    data["nodes"][1]["url"] = url
    assert refused_key(data) == "nodes[1].url"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://admin:NODEPASSWORD@127.0.0.1:8081", "'http://admin:***@127.0.0.1:8081'"),
        ("http://127.0.0.1:8081/?token=NODEPASSWORD", "'http://127.0.0.1:8081/?***'"),
        ("ftp://admin:NODEPASSWORD@127.0.0.1", "'ftp://admin:***@127.0.0.1'"),
        ("http://:NODEPASSWORD@127.0.0.1:8081", "'http://:***@127.0.0.1:8081'"),
        # a password with an unencoded / # ? (a re-tester's was shown whole: "bad port")
        ("http://u:NODE/PASSWORD@127.0.0.1:9", "'http://u:***@127.0.0.1:9'"),
        ("http://u:NODE#PASSWORD@127.0.0.1:9", "'http://u:***@127.0.0.1:9'"),
        ("http://u:NODE?PASSWORD@127.0.0.1:9", "'http://u:***@127.0.0.1:9'"),
    ],
)
def test_a_refused_node_url_is_shown_without_its_credential(url: str, shown: str) -> None:
    """The refusal of a node URL reaches the log (a reload) and the terminal: a password or a query in it is
    masked, the rest shown so that the operator finds it."""
    data = example()
    data["nodes"][1]["url"] = url
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert "NODEPASSWORD" not in str(info.value)
    assert str(info.value).startswith(f"nodes[1].url: {shown}: ")


def test_bad_tier_is_named() -> None:
    """A tier other than shield or edge is refused."""
    data = example()
    data["nodes"][0]["tier"] = "origin"
    assert refused_key(data) == "nodes[0].tier"


def test_duplicate_node_names_are_refused() -> None:
    """Two nodes with one name are refused, naming the second."""
    data = example()
    data["nodes"][1]["name"] = "shield-1"
    assert refused_key(data) == "nodes[1].name"
    with pytest.raises(ConfigError) as refused:  # the tables counted from 1, as in the file (a re-tester's)
        parse_config(data)
    assert str(refused.value) == "nodes[1].name: duplicate name 'shield-1' (the [[nodes]] tables number 1 and 2)"


def test_duplicate_user_names_are_refused() -> None:
    """Two users with one name are refused, naming the second."""
    data = example()
    data["users"].append({"name": "jcloud_00", "secret": "other"})
    assert refused_key(data) == "users[1].name"


def test_user_without_secret_is_refused() -> None:
    """A user must have a secret."""
    data = example()
    del data["users"][0]["secret"]
    assert refused_key(data) == "users[0].secret"


def test_user_with_empty_secret_is_refused() -> None:
    """An empty secret is as bad as none."""
    data = example()
    data["users"][0]["secret"] = ""
    assert refused_key(data) == "users[0].secret"


@pytest.mark.parametrize(
    "domain",
    [
        "exa mple.test",
        "-bad.example.test",
        "a..example.test",
        "*.*.example.test",
        "www.*.example.test",
        "",
        "*.",
        "1.2.3.4",  # the API refuses every URL of an IP host: such an entry could never be used
        "*.0.10",
        "0x7f000001",  # IPv4 in hex (URL parsers read it so): a security tester's
        "*.0x7f",
        "a.test.1",
    ],
)
def test_bad_domain_is_refused(domain: str) -> None:
    """A domain that is not a name or a leading '*.' wildcard is refused."""
    data = example()
    data["users"][0]["domains"] = ["www.example.test", domain]
    assert refused_key(data) == "users[0].domains"


def test_a_domain_of_non_ascii_letters_is_refused_giving_its_ascii_form() -> None:
    """Before: "is not a domain name or a '*.domain' wildcard", where the API tells a URL's such host to use
    its ASCII form (a tester's)."""
    data = example()
    data["users"][0]["domains"] = ["*.中国.example.test"]
    with pytest.raises(ConfigError) as refused:
        parse_config(data)
    assert "ASCII form (IDNA), as URLs give it: '*.xn--fiqs8s.example.test'" in str(refused.value)


@pytest.mark.parametrize(
    "listen",
    [
        *(
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:65536",
            ":8080",
            "bad host:80",
            "h:x",
            "h:\u0664\u0665\u0668",
            "h:\u00b2",
        ),
        # An IPv6 address without its brackets, half of them, an IPv4 address in them, a zone id, an IPv4 address
        # in IPv6 form (taken, then logged as written or not listened on: an IPv6 tester's).
        *("::1:8080", ":::8080", "[::1:8080", "::1]:8080", "[[::1]]:8080", "[127.0.0.1]:8080"),
        *("[::1%lo]:8080", "[::ffff:127.0.0.1]:8080"),
    ],
)
def test_bad_listen_is_refused(listen: str) -> None:
    """listen must be HOST:PORT with a port in 1..65535, of ASCII digits (a re-tester's Arabic-Indic digits were
    said OK and listened on; `²` refused with int's own words)."""
    data = example()
    data["listen"] = listen
    assert refused_key(data) == "listen"
    with pytest.raises(ConfigError) as refused:
        parse_config(data)
    assert "invalid literal" not in str(refused.value)


def test_ipv6_listen_is_accepted() -> None:
    """A bracketed IPv6 listen address is accepted and its host unbracketed."""
    config = parse_config({"listen": "[::1]:9000"})
    assert (config.listen_host, config.listen_port) == ("::1", 9000)
    assert parse_config({"metrics_listen": "[::]:9001"}).metrics_listen == "[::]:9001"
    assert refused_key({"metrics_listen": "::1:9001"}) == "metrics_listen"


@pytest.mark.parametrize("store", ["mysql://db", "redis://localhost", "/var/lib/x.db"])
def test_bad_store_scheme_is_refused(store: str) -> None:
    """Only sqlite:, postgresql:, postgres: and memory: stores exist."""
    assert refused_key({"store": store}) == "store"


@pytest.mark.parametrize("store", ["sqlite://relative.db", "sqlite:", "sqlite:///", "sqlite://host/x.db"])
def test_a_sqlite_url_without_a_file_is_refused_as_serve_would_refuse_it(store: str) -> None:
    """check-config passed `sqlite://relative.db`, which `serve` then refused: both refuse it now, saying how
    to write a path."""
    with pytest.raises(ConfigError) as refused:
        parse_config({"store": store})
    assert refused.value.key == "store"
    assert "sqlite:///absolute/path.db, or sqlite:relative/path.db" in str(refused.value)


def test_bad_timezone_is_refused() -> None:
    """An unknown time zone for the signature day is refused."""
    assert refused_key({"api": {"timezone": "Mars/Olympus"}}) == "api.timezone"


def test_non_positive_limit_is_refused() -> None:
    """A zero limit is refused rather than blocking every call."""
    assert refused_key({"limits": {"urls_per_call": 0}}) == "limits.urls_per_call"


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    """load_config reads and validates a TOML file."""
    path = tmp_path / "edgewarm.toml"
    path.write_text(PRODUCT_EXAMPLE, encoding="utf-8")
    assert isinstance(load_config(path), Config)
    assert load_config(str(path)).nodes[0].name == "shield-1"


def test_load_config_on_a_missing_file(tmp_path: Path) -> None:
    """A missing file is a ConfigError naming the path, not an OSError."""
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_load_config_on_invalid_toml(tmp_path: Path) -> None:
    """A file that is not TOML is a ConfigError, not a TOMLDecodeError."""
    path = tmp_path / "bad.toml"
    path.write_text('listen = "127.0.0.1:8080\n[[users]\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "not valid TOML" in str(info.value)


@pytest.mark.parametrize("text", ["", "\n  \n", "# edgewarm\n# nothing yet\n"], ids=["empty", "blank", "comments"])
def test_load_config_refuses_a_file_without_any_setting(tmp_path: Path, text: str) -> None:
    """A file with no settings (what an editor or a config tool leaves for a moment) is not taken as "every
    default": serve would start on the default address and store, a reload would drop every user and node."""
    path = tmp_path / "edgewarm.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path} has no settings at all (empty, or comments only): is it being written?"


def test_a_reload_that_drops_every_user_or_every_node_is_refused_saying_why() -> None:
    """A config cut off before its nodes (or its users) is refused as a reload; one that keeps some of each,
    or changes them, is not."""
    running = parse_config(tomllib.loads(PRODUCT_EXAMPLE))
    no_nodes = parse_config({"users": [{"name": "u", "secret": "s", "domains": ["a.test"]}]})
    assert reload_refusal(running, no_nodes) == (
        f"the new config has no nodes (the running one has {len(running.nodes)} nodes): "
        "a file cut off or being written?"
    )
    nothing = parse_config({"listen": "127.0.0.1:9999"})
    assert reload_refusal(running, nothing) == (
        f"the new config has no users and no nodes (the running one has {len(running.users)} users and "
        f"{len(running.nodes)} nodes): a file cut off or being written?"
    )
    fewer = parse_config({**tomllib.loads(PRODUCT_EXAMPLE), "nodes": [{"name": "other", "url": "http://127.0.0.1:9"}]})
    assert reload_refusal(running, fewer) is None
    assert reload_refusal(nothing, nothing) is None  # nothing to lose


def test_a_reloads_line_names_what_it_adds_and_changes_but_no_secret() -> None:
    """A reload names in one line the nodes and users added and what changed on those kept (a tester's renames
    logged only the removals; a changed secret or width not at all); a user's settings by name only."""
    running = parse_config(example())
    data = example()
    data["users"][0] |= {"secret": "a-new-secret-0123456789", "domains": ["other.example.test"]}
    data["users"].append({"name": "robert", "secret": "robert-secret-0123456789", "domains": ["r.test"]})
    data["nodes"][0] |= {"concurrency": 2, "purge_headers": {"X-Token": "t0ken"}}
    data["nodes"][1]["name"] = "edge-2b"
    fresh = parse_config(data)
    line = reload_changes(running, fresh)
    assert line == (
        "nodes added: edge-2b; users added: robert; changed: user jcloud_00 (secret, domains), "
        "node shield-1 (concurrency 64 -> 2, purge_headers)"
    )
    assert "a-new-secret" not in line and "t0ken" not in line and "other.example" not in line
    assert reload_changes(running, parse_config(example())) == ""
    # An emptied value said as '' (a reload tester read "purge_method PURGE -> " as a line cut off).
    no_purge = example()
    no_purge["nodes"][0]["purge_method"] = ""
    assert reload_changes(running, parse_config(no_purge)) == "changed: node shield-1 (purge_method PURGE -> '')"
    spaced = example()
    spaced.setdefault("engine", {})["user_agent"] = " "
    assert "(user_agent edgewarm/" in reload_changes(running, parse_config(spaced))
    assert reload_changes(running, parse_config(spaced)).endswith(" -> ' ')")
    wider = example() | {"engine": {"per_node_concurrency": 8}}
    assert reload_changes(running, parse_config(wider)) == (
        "changed: node shield-1 (concurrency 64 -> 8), node edge-1 (concurrency 64 -> 8), "
        "[engine] (per_node_concurrency 64 -> 8)"
    )
    # The other sections too (a re-tester's [limits] and [api] changes took effect, the line named none).
    other = example() | {"limits": {"urls_per_call": 50}, "api": {"timezone": "UTC"}}
    assert reload_changes(running, parse_config(other)) == (
        "changed: [limits] (urls_per_call 100 -> 50), [api] (timezone Asia/Shanghai -> UTC)"
    )
    # One taken at start only is named by restart_only_changes, not as changed (an ops tester read it as in force).
    timeout = example() | {"api": {"request_timeout": 30.0}, "log_level": "debug"}
    assert reload_changes(running, parse_config(timeout)) == ""
    assert restart_only_changes(running, parse_config(timeout)) == ["log_level", "[api] request_timeout"]


def test_load_config_names_the_key_from_a_file(tmp_path: Path) -> None:
    """A wrong key in a file is named just as with parse_config."""
    path = tmp_path / "edgewarm.toml"
    path.write_text(PRODUCT_EXAMPLE.replace('tier = "shield"', 'tierr = "shield"'), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "nodes[0].tierr"


def test_config_path_comes_from_the_given_environ() -> None:
    """EDGEWARM_CONFIG is read from the mapping passed in."""
    assert config_path_from({"EDGEWARM_CONFIG": "/etc/edgewarm.toml"}) == "/etc/edgewarm.toml"
    assert config_path_from({}) is None


@pytest.mark.parametrize(
    ("host", "owned"),
    [
        ("www.example.test", True),
        ("a.img.example.test", True),
        ("b.a.img.example.test", True),
        ("img.example.test", False),
        ("ximg.example.test", False),
        ("evilimg.example.test", False),
        ("example.test", False),
        ("wwww.example.test", False),
        ("www.example.test.evil.test", False),
        ("a.img.example.test.evil.test", False),
    ],
)
def test_domain_ownership_with_wildcards(host: str, owned: bool) -> None:
    """'*.img.example.test' owns its subdomains at any depth but not itself nor look-alikes."""
    user = parse_config(example()).users[0]
    assert user.owns(host) is owned


def test_domains_are_lower_cased() -> None:
    """Configured domains are compared in lower case."""
    data = example()
    data["users"][0]["domains"] = ["WWW.Example.TEST", "*.IMG.example.test"]
    user = parse_config(data).users[0]
    assert user.owns("www.example.test")
    assert user.owns("a.img.example.test")


def test_per_user_limit_overrides_apply_over_defaults() -> None:
    """A user's own limit replaces the default; the others stay."""
    data = example()
    data["users"].append({"name": "small", "secret": "s", "urls_per_call": 3})
    config = parse_config(data)
    big = config.users[0].limits(config.limits)
    assert big.urls_per_day == 1_000_000
    assert big.urls_per_call == 100
    small = config.users[1].limits(config.limits)
    assert small.urls_per_call == 3
    assert small.urls_per_day == 2000
    assert config.limits.urls_per_day == 2000  # the defaults are not changed


@pytest.mark.parametrize(
    ("data", "key", "message"),
    [
        ({"limits": {"urls_per_call": "100"}}, "limits.urls_per_call", "Input should be a valid integer"),
        ({"engine": {"verify": "yes"}}, "engine.verify", "Input should be a valid boolean"),
        ({"engine": {"read_timeout": "10"}}, "engine.read_timeout", "Input should be a valid number"),
    ],
)
def test_a_number_or_boolean_written_as_a_string_is_refused_not_converted(
    data: dict[str, Any], key: str, message: str
) -> None:
    """TOML has numbers and booleans: "100" or "yes" is a mistake to name, not a value to guess (both were
    accepted, "yes" as true)."""
    with pytest.raises(ConfigError) as refused:
        parse_config({**example(), **data})
    assert (refused.value.key, refused.value.message) == (key, message)


def test_whole_numbers_for_seconds_and_tier_names_still_read_as_written() -> None:
    config = parse_config({**example(), "engine": {"read_timeout": 10, "verify": True}})
    assert config.engine.read_timeout == 10.0 and config.engine.verify is True
    assert config.nodes[0].tier is Tier.SHIELD


@pytest.mark.parametrize("section", ["nodes", "users"])
def test_a_table_written_where_an_array_of_tables_belongs_is_named(section: str) -> None:
    """`[nodes]` instead of `[[nodes]]`: the message says how to write it (it said "Input should be a valid
    tuple")."""
    data = example()
    data[section] = data[section][0]
    with pytest.raises(ConfigError) as refused:
        parse_config(data)
    assert refused.value.key == section
    assert refused.value.message == (f"must be an array of tables: write each entry as [[{section}]], not [{section}]")


def test_a_folder_of_time_zones_is_not_a_time_zone() -> None:
    """`timezone = "America"` (a folder of zones) is refused like any unknown zone (it raised IsADirectoryError)."""
    assert refused_key({"api": {"timezone": "America"}}) == "api.timezone"


@pytest.mark.parametrize(
    ("document", "key"),
    [
        ("listen = 1979-05-27\n", "listen"),
        ("[engine]\nread_timeout = 07:32:00\n", "engine.read_timeout"),
        ('[[nodes]]\nname = "n"\nurl = "http://127.0.0.1:1"\nsince = 1979-05-27T07:32:00Z\n', "nodes[0].since"),
    ],
)
def test_a_toml_date_or_time_is_refused_naming_its_key(document: str, key: str) -> None:
    """No key takes a date or time: refused naming the key (reading the document as JSON raised TypeError)."""
    with pytest.raises(ConfigError) as refused:
        parse_config(tomllib.loads(document))
    assert (refused.value.key, refused.value.message) == (key, "a date or time is not a value any key takes")


@pytest.mark.parametrize(
    ("section", "key", "value", "where"),
    [
        ("engine", "read_timeout", float("inf"), "engine.read_timeout"),
        ("engine", "connect_timeout", float("inf"), "engine.connect_timeout"),
        ("engine", "grace_seconds", float("inf"), "engine.grace_seconds"),
        ("engine", "read_timeout", 1e15, "engine.read_timeout"),
        ("engine", "dedupe_seconds", 1e9, "engine.dedupe_seconds"),
        ("engine", "per_node_concurrency", 10**9, "engine.per_node_concurrency"),
        ("engine", "max_attempts", 5000, "engine.max_attempts"),
        ("engine", "user_agent", "edgewarm\r\nX-Injected: 1", "engine.user_agent"),
        ("webhooks", "max_attempts", 100, "webhooks.max_attempts"),
        ("webhooks", "allowed_hosts", ["hooks.test:8080"], "webhooks.allowed_hosts"),
        ("webhooks", "allowed_hosts", ["https://hooks.test/"], "webhooks.allowed_hosts"),
        # What URL parsers read as an address: one was posted to 127.0.0.1, the other failed every attempt
        ("webhooks", "allowed_hosts", ["0x7f000001"], "webhooks.allowed_hosts"),
        ("webhooks", "allowed_hosts", ["127.1"], "webhooks.allowed_hosts"),
        ("retention", "days", float("inf"), "retention.days"),
        # A busy loop (a quarter of a core while idle) and an unbounded transaction (a tester's)
        ("retention", "interval_seconds", 0.001, "retention.interval_seconds"),
        ("retention", "batch", 10**9, "retention.batch"),
    ],
)
def test_values_that_would_overflow_or_never_apply_are_refused(section: str, key: str, value: Any, where: str) -> None:
    """Durations that are infinite or beyond a week, widths and attempts beyond their bounds, a header value
    with CR LF, allowed hosts with a port or a scheme (they never matched a callback's host): refused by
    check-config, naming the key (before: accepted, then a traceback at start, or every callback refused)."""
    data = example()
    data.setdefault(section, {})[key] = value
    assert refused_key(data) == where


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("url", "http://exa mple.test:8080"),
        ("purge_headers", {"X-Token": "a\r\nb"}),
        ("purge_headers", {"X Token": "a"}),
        ("ban_header", "X-Ban:"),
    ],
)
def test_a_node_that_could_send_no_request_is_refused(key: str, value: Any) -> None:
    """A space in the node's host, CR LF in a purge header's value, a header name that is no HTTP field name:
    refused by check-config (before: accepted, then every item failed as "internal error: ValueError")."""
    data = example()
    data["nodes"][0][key] = value
    assert refused_key(data) == "nodes[0]." + key


def test_hosts_and_ip_addresses_are_allowed_webhook_hosts() -> None:
    data = example()
    data["webhooks"] = {"allowed_hosts": ["Hooks.Example.test", "127.0.0.1", "::1"]}
    assert parse_config(data).webhooks.allowed_hosts == ("hooks.example.test", "127.0.0.1", "::1")


@pytest.mark.parametrize(
    ("store", "said"),
    [
        ("postgresql://edgewarm:hunter2pw@127.0.0.1:notaport/edgewarm", "a port is not a number from 1 to 65535"),
        ("postgresql://edgewarm@127.0.0.1:99999/edgewarm", "a port is not a number from 1 to 65535"),
        ("postgresql://edgewarm:hunter2pw@h1:5432,h2:x/edgewarm", "a port is not a number from 1 to 65535"),
        ("postgresql://edgewarm:hunter2pw@[::1]:5432,h2:70000/edgewarm", "a port is not a number from 1 to 65535"),
        ("postgresql://edgewarm:hunter2pw@h1,h2/edgewarm?port=5432,abc", "a port is not a number from 1 to 65535"),
        ("postgresql://edgewarm:hunter2pw@h1/edgewarm?port=0", "a port is not a number from 1 to 65535"),
        ("postgresql://edgewarm:hunter2/pw@h1/edgewarm", "must be percent-encoded"),
        ("postgresql://edgewarm:hunter2@pw@127.0.0.1:5432/edgewarm", "an @ in the user name or password must be"),
        ("postgresql://edgewarm:123456789/pw@h1/edgewarm", "must be percent-encoded"),
        # The / ends the address at a password that reads as a port (12345): it was OK, then "Name or service not
        # known" for 127.0.0.1:1 (an ops tester's).
        ("postgresql://edgewarm:12345/hunter2@127.0.0.1:1/x", "an @ after the first / .a password with / in it must"),
        ("postgresql://edgewarm:hunter2@h1/edgewarm?pool_size=1", "pool_size must be given once, a number from 2"),
        ("postgresql://edgewarm@h1/edgewarm?sslmode=require&pool_size=x", "pool_size must be given once"),
        ("postgresql://edgewarm@h1/edgewarm?pool_size=4&pool_size=5", "pool_size must be given once"),
        ("postgresql://edgewarm@h1/edgewarm?pool_size=\u00b2", "pool_size must be given once"),
        ("postgresql://edgewarm:hunter2pw@127.0.0.1:\u00b2/edgewarm", "a port is not a number from 1 to 65535"),
    ],
)
def test_a_postgresql_url_whose_port_is_no_port_is_refused_without_its_password(store: str, said: str) -> None:
    """`check-config` said OK; `serve` then failed: "invalid literal for int() with base 10: 'notaport'"."""
    with pytest.raises(ConfigError, match=said) as refused:
        parse_config({"store": store})
    said = str(refused.value)
    assert "hunter2" not in said and "123456789" not in said and "store" in said, said


@pytest.mark.parametrize(
    "store",
    [
        "postgresql://e@h1:5432,h2:5433/e",
        "postgresql://e@[::1]:5432,h2/e",
        "postgresql://e@h1,h2/e?port=5432,5433",
        "postgres://e:p@db.internal/e?sslmode=require",
    ],
)
def test_postgresql_urls_of_one_or_several_hosts_are_taken(store: str) -> None:
    assert parse_config({"store": store}).store == store


def test_settings_that_keep_a_feature_from_working_are_cautioned() -> None:
    """check-config said OK to two nodes of one URL, to BAN on an nginx node, to a fetch_timeout that cuts
    requests before read_timeout could: each is one caution now (serve logs them too)."""
    config = parse_config(
        {
            "users": [{"name": "u", "secret": "s" * 16, "domains": ["example.test"]}],
            "nodes": [
                {"name": "a", "url": "http://127.0.0.1:8080"},
                {"name": "b", "url": "http://127.0.0.1:8080/"},
                {"name": "c", "url": "http://127.0.0.1:8081", "dir_purge": "ban"},
                {"name": "v", "url": "http://127.0.0.1:8082", "kind": "varnish", "dir_purge": "ban"},
                {"name": "d", "url": "http://127.0.0.1"},  # one cache spelled two ways (a newcomer's)
                {"name": "e", "url": "HTTP://LOCALHOST.:80"},
                {"name": "f", "url": "https://127.0.0.1"},  # another port
            ],
            "engine": {"fetch_timeout": 30.0},
        }
    )
    assert config.cautions() == [
        "[engine] fetch_timeout (30 s) is not above read_timeout (30 s): a request is cut before a silence of "
        "read_timeout could end it",
        "nodes a and b have one URL: each warm and purge goes to it 2 times",
        "nodes d and e have one URL: each warm and purge goes to it 2 times",
        "node 'c': dir_purge = \"ban\" sends BAN, which only Varnish takes (its kind is nginx)",
    ]
    assert parse_config({"users": [], "nodes": []}).cautions()[-2:] == [
        "no [[nodes]]: submissions will be refused until nodes are configured (a running service's reload refuses "
        "such a file: a file cut off looks like it)",
        "no [[users]]: every call will be refused (JD code 20) until users are configured (a running service's reload "
        "refuses such a file: a file cut off looks like it)",
    ]


def test_short_and_shared_secrets_are_cautioned() -> None:
    """check-config said OK to `secret = "x"` and to two users with one secret (a tester, session 17)."""
    config = parse_config(
        {
            "users": [
                {"name": "a", "secret": "x", "domains": ["a.test"]},
                {"name": "b", "secret": "0123456789abcdef", "domains": ["b.test"]},
                {"name": "c", "secret": "0123456789abcdef", "domains": ["c.test"]},
                {"name": "d", "secret": "fedcba9876543210", "domains": ["d.test"]},
            ],
            "nodes": [{"name": "n", "url": "http://127.0.0.1:8080"}],
        }
    )
    assert config.cautions() == [
        "user 'a' has a secret of 1 characters: one that short can be guessed; use 16 or more (openssl rand -hex 16)",
        "users 'b' and 'c' have one secret: each can act as the other",
    ]


def test_users_whose_domains_have_hosts_in_common_are_cautioned() -> None:
    """A tenant's name under another's wildcard (a tester's `*.img.example.test` beside `a.img.example.test`)
    said OK: each could warm and refresh the other's URLs, a directory refresh of one purging the other's."""
    users = [
        {"name": "a", "secret": "a" * 16, "domains": ["*.img.example.test", "x.test"]},
        {"name": "b", "secret": "b" * 16, "domains": ["a.img.example.test"]},
        {"name": "c", "secret": "c" * 16, "domains": ["x.test", "img.example.test"]},  # not under *.img.…
        {"name": "d", "secret": "d" * 16, "domains": ["*.b.img.example.test"]},
        {"name": "e", "secret": "e" * 16, "domains": ["other.test", "*.test.other"]},
    ]
    config = parse_config({"users": users, "nodes": [{"name": "n", "url": "http://127.0.0.1:8080"}]})
    rest = (
        ": each may warm and refresh the others' URLs there (a directory refresh of one purges the others'), and sees "
        "their refreshes of them wait; give each user domains of its own"
    )
    assert config.cautions() == [
        f"users 'a' and 'c' both own x.test{rest}",
        f"users 'b' and 'a' both own a.img.example.test (by *.img.example.test){rest}",
        f"users 'd' and 'a' both own *.b.img.example.test (by *.img.example.test){rest}",
    ]
    # One line a domain, ten at most: 2,000 users of one domain were 2 million lines (a re-tester's).
    many = [{"name": f"u{n:04}", "secret": f"{n:016}", "domains": ["x.test", f"*.own{n}.test"]} for n in range(2000)]
    many += [{"name": f"w{n}", "secret": f"w{n:015}", "domains": [f"a.own{n}.test"]} for n in range(12)]
    cautions = parse_config({"users": many, "nodes": [{"name": "n", "url": "http://127.0.0.1:8080"}]}).cautions()
    assert len(cautions) == 11 and cautions[-1] == "and 3 more domains with several owners", cautions[-1]
    assert cautions[0] == f"users 'u0000', 'u0001', 'u0002', 'u0003', 'u0004' and 1995 more all own x.test{rest}"


def test_a_wildcard_over_a_top_level_domain_is_cautioned() -> None:
    """A tenant tester's `*.test` (or `*.com`) said OK: the user may warm and purge every site under it."""
    users = [
        {"name": "a", "secret": "a" * 16, "domains": ["*.COM", "*.example.com", "test"]},
        {"name": "b", "secret": "b" * 16, "domains": ["*.xn--fiqs8s"]},  # *.中国, as the config holds it
    ]
    config = parse_config({"users": users, "nodes": [{"name": "n", "url": "http://127.0.0.1:8080"}]})
    assert config.cautions() == [
        "user 'a': domain '*.com' is every site under the top-level domain 'com' (a typo for *.example.com?)",
        "user 'b': domain '*.xn--fiqs8s' is every site under the top-level domain 'xn--fiqs8s' (a typo for "
        "*.example.xn--fiqs8s?)",
    ]


def test_the_secret_of_readmes_example_is_cautioned() -> None:
    """README's example user has a secret that anyone may read: a config copied from it said OK (session 31's
    note), as an API secret or a webhook_secret."""
    readme = Path(__file__).resolve().parents[2] / "README.md"
    assert f'secret = "{EXAMPLE_SECRET}"' in readme.read_text()
    users = [
        {"name": "a", "secret": EXAMPLE_SECRET, "domains": ["a.test"]},
        {"name": "b", "secret": "0123456789abcdef", "webhook_secret": EXAMPLE_SECRET, "domains": ["b.test"]},
        {"name": "c", "secret": "fedcba9876543210", "domains": ["c.test"]},
    ]
    caution = "which anyone may read and sign with: make one of your own (openssl rand -hex 16)"
    config = parse_config({"users": users, "nodes": [{"name": "n", "url": "http://127.0.0.1:8080"}]})
    assert config.cautions() == [
        f"user 'a' has README's example secret as its secret, {caution}",
        f"user 'b' has README's example secret as its webhook_secret, {caution}",
        "user 'b' has a webhook_secret that is the API secret of 'a': its webhooks' receivers could call the API "
        "with it",
    ]


def test_a_short_webhook_secret_or_one_that_is_an_api_secret_is_cautioned() -> None:
    """A webhook_secret is a key of its own: short, it is guessed (webhooks forged); another user's API secret (or
    the user's own), its receivers could call the API as that user. Not in any repr."""
    users = [
        {"name": "a", "secret": "0123456789abcdef", "webhook_secret": "short", "domains": ["a.test"]},
        {"name": "b", "secret": "fedcba9876543210", "webhook_secret": "0123456789abcdef", "domains": ["b.test"]},
        {"name": "c", "secret": "aaaabbbbccccdddd", "webhook_secret": "a-key-of-its-own-0123", "domains": ["c.test"]},
    ]
    config = parse_config({"users": users, "nodes": [{"name": "n", "url": "http://127.0.0.1:8080"}]})
    assert config.cautions() == [
        "user 'a' has a webhook_secret of 5 characters: one that short can be guessed, and webhooks forged; use 16 "
        "or more (openssl rand -hex 16)",
        "user 'b' has a webhook_secret that is the API secret of 'a': its webhooks' receivers could call the API "
        "with it",
    ]
    assert [u.webhook_key() for u in config.users] == ["short", "0123456789abcdef", "a-key-of-its-own-0123"]
    assert "a-key-of-its-own" not in repr(config)
    shared = [users[2], {**users[2], "name": "d", "secret": "ddddeeeeffff0000"}]
    assert parse_config({"users": shared}).cautions()[-1:] == [
        "users 'c' and 'd' have one webhook_secret: each one's receivers could forge the other's webhooks"
    ]
    without = {k: v for k, v in users[2].items() if k != "webhook_secret"}
    assert parse_config({"users": [without]}).users[0].webhook_key() == "aaaabbbbccccdddd"


def test_a_config_file_others_can_change_or_read_is_cautioned(tmp_path: Path) -> None:
    """It holds the users' secrets: check-config said OK to one of mode 666."""
    path = tmp_path / "edgewarm.toml"
    path.write_text("")
    path.chmod(0o600)
    assert file_cautions(path) == []
    path.chmod(0o640)
    assert file_cautions(path) == []
    path.chmod(0o644)
    assert file_cautions(path) == [
        f"{path} can be read by every user of this machine (mode 644), secrets and all: chmod o-r"
    ]
    path.chmod(0o666)
    assert file_cautions(path) == [
        f"{path} can be changed by other users of this machine (mode 666): chmod go-w",
        f"{path} can be read by every user of this machine (mode 666), secrets and all: chmod o-r",
    ]
    assert file_cautions(tmp_path / "missing.toml") == []
    path.chmod(0o600)
    tmp_path.chmod(0o777)  # anyone may replace it: a tester's finding
    assert file_cautions(path) == [
        f"{path} is in a folder every user of this machine can write to ({tmp_path}, mode 777), where the file can "
        "be replaced: move it, or chmod o-w the folder"
    ]
    tmp_path.chmod(0o1777)  # sticky, as /tmp: only its owner may replace it
    assert file_cautions(path) == []
    # A folder above (a security tester's): ww/safe (700) can be renamed away and another put in its place; and a
    # symbolic link in a safe folder to a file in ww: only the link's folder was looked at.
    tmp_path.chmod(0o777)
    (safe := tmp_path / "safe").mkdir(mode=0o700)
    (inner := safe / "edgewarm.toml").write_text("")
    inner.chmod(0o600)
    (elsewhere := tmp_path / "elsewhere").mkdir(mode=0o700)
    (link := elsewhere / "linked.toml").symlink_to(path)
    for config in (inner, link):
        assert file_cautions(config) == [
            f"{config} is in a folder every user of this machine can write to ({tmp_path}, mode 777), where the file "
            "can be replaced: move it, or chmod o-w the folder"
        ]
    tmp_path.chmod(0o700)
    assert file_cautions(inner) == file_cautions(link) == []
    path.rename(tmp_path / "moved.toml")
    (open_folder := tmp_path / "open").mkdir()
    open_folder.chmod(0o777)
    (open_folder / "real.toml").write_text("")
    (open_folder / "real.toml").chmod(0o600)
    link.unlink()
    link.symlink_to(open_folder / "real.toml")
    assert file_cautions(link) == [
        f"{link} is in a folder every user of this machine can write to ({open_folder}, mode 777), where the file "
        "can be replaced: move it, or chmod o-w the folder"
    ]
    # A chain through a link in an open folder (a re-tester's): safe/chain.toml -> ../open/hop.toml -> real.
    (open_folder / "hop.toml").symlink_to(tmp_path / "moved.toml")
    (tmp_path / "moved.toml").chmod(0o600)
    (chain := elsewhere / "chain.toml").symlink_to("../open/hop.toml")
    said = f"is in a folder every user of this machine can write to ({open_folder}, mode 777)"
    assert [c for c in file_cautions(chain) if "folder" in c] == [
        f"{chain} {said}, where the file can be replaced: move it, or chmod o-w the folder"
    ]
    # A folder linked to the open one is named once, by its real path; `open/../elsewhere` reads no name of open.
    (through := elsewhere / "opendir").symlink_to("../open")
    assert [c for c in file_cautions(through / "real.toml") if "folder" in c] == [
        f"{through / 'real.toml'} {said}, where the file can be replaced: move it, or chmod o-w the folder"
    ]
    (plain := elsewhere / "plain.toml").write_text("")
    plain.chmod(0o600)
    assert file_cautions(open_folder / ".." / "elsewhere" / "plain.toml") == []
    open_folder.chmod(0o700)
    (tmp_path / "moved.toml").rename(path)
    if os.getuid() == 0:  # root may give it away
        os.chown(path, 65534, -1)  # another user's (nobody)
        assert file_cautions(path) == [f"{path} is owned by another user (uid 65534), who can change it"]


def test_a_get_purge_without_its_bypass_header_is_cautioned() -> None:
    """check-config said OK to `purge_method = "GET"` without `purge_headers`, and every purge on the node then
    failed "answered the refetch from its cache" (a tester's)."""
    nodes = [
        {"name": "bare", "url": "http://127.0.0.1:8081", "purge_method": "GET"},
        {"name": "ok", "url": "http://127.0.0.1:8082", "purge_method": "GET", "purge_headers": {"X-Refetch": "1"}},
    ]
    users = [{"name": "a", "secret": "0123456789abcdef", "domains": ["example.test"]}]
    assert parse_config({"users": users, "nodes": nodes}).cautions() == [
        "node 'bare': purge_method = \"GET\" without purge_headers is a plain GET, answered from the cache: every "
        "purge there fails; give the header its proxy_cache_bypass honours"
    ]
    # ATS answers a no-cache GET from its cache by default (a tester's): said, whatever the header.
    ats = {**nodes[1], "name": "ats", "kind": "ats", "purge_headers": {"Cache-Control": "no-cache"}}
    assert parse_config({"users": users, "nodes": [ats]}).cautions() == [
        "node 'ats': purge_method = \"GET\" on ATS: it answers from its cache a request with no-cache "
        "(proxy.config.http.cache.ignore_client_no_cache is 1 by default), and such a purge fails: use PURGE"
    ]


def test_tls_verify_off_and_a_ca_file_that_holds_no_ca_are_cautioned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TLS tester's: `tls_verify = false` passed unsaid (on an http:// node too, where it does nothing), and
    SSL_CERT_FILE naming a missing file, a folder or a key was read as no CA at all, unsaid: every https node
    then failed "unable to get local issuer certificate"."""
    nodes = [
        {"name": "open", "url": "https://127.0.0.1:8443", "tls_verify": False},
        {"name": "plain", "url": "http://127.0.0.1:8080", "tls_verify": False},
        {"name": "checked", "url": "https://127.0.0.1:8444"},
    ]
    users = [{"name": "a", "secret": "0123456789abcdef", "domains": ["a.test"]}]
    assert parse_config({"users": users, "nodes": nodes}).cautions() == [
        "node 'open': tls_verify = false: its certificate is not checked, so anyone on the way can answer as the node "
        "(and be taken for it)",
        "node 'plain': tls_verify = false does nothing on an http:// node",
    ]
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    assert ca_file_cautions() == []
    key = tmp_path / "key.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n")
    rest = ": https nodes' and receivers' certificates are checked against none of its CAs"
    for named, problem in (
        (tmp_path / "missing.pem", "which cannot be read (No such file or directory)"),
        (tmp_path, "which cannot be read (Is a directory)"),
        (key, "which holds no certificate (PEM) a TLS client can read"),
    ):
        monkeypatch.setenv("SSL_CERT_FILE", str(named))
        assert ca_file_cautions() == [f"SSL_CERT_FILE names {named}, {problem}{rest}"]
    key.write_text("-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----\n")  # its markers only
    assert ca_file_cautions() == [
        f"SSL_CERT_FILE names {key}, which holds no certificate (PEM) a TLS client can read{rest}"
    ]
    key.write_bytes(self_signed(tmp_path / "ca", "ca.test")[0].read_bytes())
    monkeypatch.setenv("SSL_CERT_FILE", str(key))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "none"))
    assert ca_file_cautions() == [
        f"SSL_CERT_DIR names {tmp_path / 'none'}, which is no folder: none of its CAs are read"
    ]
