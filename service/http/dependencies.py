"""FastAPI dependencies shared by the routes: the one way a handler gets the running service."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.state import ServiceState


def get_state(request: Request) -> ServiceState:
    """The service `create_app` started (models, queues, metrics), kept on `app.state.service`."""
    return request.app.state.service


State = Annotated[ServiceState, Depends(get_state)]
