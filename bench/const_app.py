"""S5's baseline: the same server stack as edgewarm's API (uvicorn + FastAPI on uvloop, one process, no access
log), answering one constant JSON to a POST after reading its body. What a query costs beyond this is edgewarm's.

    .venv/bin/python bench/const_app.py PORT
"""

from __future__ import annotations

import sys

import uvicorn
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

ANSWER = b'{"status":0,"data":{"taskid":"00000000-0000-4000-8000-000000000000","status":0,"msg":"Succeeded"}}'

app = FastAPI()


@app.post("/api/prefetchQuery")
async def query(request: Request) -> Response:
    await request.body()
    return Response(ANSWER, media_type="application/json")


@app.get("/healthz")
async def healthz() -> Response:
    return Response(b'{"ok":true}', media_type="application/json")


def main() -> int:
    port = int(sys.argv[1])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, loop="uvloop", lifespan="off")
    return 0


if __name__ == "__main__":
    sys.exit(main())
