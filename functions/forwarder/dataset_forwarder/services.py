"""What live ways in share across targets: the HTTP pools, the secret cache, AWS clients for MWAA."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .transport import Transport
    from .ways_in.auth import SecretSource
    from .ways_in.mwaa import MwaaClients


@dataclass(frozen=True)
class Services:
    transport: Transport
    secrets: SecretSource
    mwaa: MwaaClients
    clock: Callable[[], float] = field(default=time.time)  # wall clock: token expiry
