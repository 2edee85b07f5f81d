"""The embedding example (examples/fastapi_embed.py) runs as documented: FastAPI app, mounted broadcaster."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import socket
from pathlib import Path

import httpx
import uvicorn

from helpers import recv_json, until, ws_connect

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fastapi_embed.py"


async def test_the_fastapi_example_publishes_to_its_mounted_websocket() -> None:
    spec = importlib.util.spec_from_file_location("fastapi_embed", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(module.app, log_level="warning"))
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    try:
        await until(lambda: server.started or task.done(), what="uvicorn to start")
        async with ws_connect(f"ws://127.0.0.1:{port}/realtime/ws") as ws:
            await ws.send(json.dumps({"Order": {"catalog": {"amount": None}}}))
            assert "Order" in await recv_json(ws)
            async with httpx.AsyncClient() as http:
                r = await http.post(f"http://127.0.0.1:{port}/orders",
                                    json={"_id": "A-1", "order_id": "A-1", "amount": 12.5, "margin": 3.0})
            assert r.status_code == 200
            msg = await recv_json(ws)
            assert msg == {"doc_class": "Order", "op": "I", "seq": r.json()["seq"],
                           "message": {"_id": "A-1", "amount": 12.5}}
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)
        sock.close()
