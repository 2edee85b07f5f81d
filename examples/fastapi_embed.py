"""Mount xia-broadcast into an existing FastAPI (or Starlette) application.

Run:  pip install fastapi uvicorn && python examples/fastapi_embed.py
Then: a client connects to ws://127.0.0.1:8000/realtime/ws and sends {"Order": {}};
      the app's own endpoint POST /orders publishes a change to it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from fastapi import FastAPI

from xia_broadcast.server import Settings, create_app
from xia_broadcast.server.demo import ORDER_SCHEMA

realtime = create_app(Settings(classes={"Order": ORDER_SCHEMA}))


@contextlib.asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    yield
    await realtime.state.shutdown()  # flush queued messages, close websockets with 1001


app = FastAPI(title="shop", lifespan=lifespan)
app.mount("/realtime", realtime)


@app.post("/orders")
async def create_order(order: dict[str, Any]) -> dict[str, str]:
    """The application's own endpoint: store the order (not shown), then publish the change."""
    seq = await realtime.state.service.publish("Order", "I", order)
    return {"seq": seq}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=8000)
