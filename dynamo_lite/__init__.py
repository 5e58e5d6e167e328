"""dynamo_lite: a pure-Python lifecycle runtime for Dynamo unified-backend workers.

An engine author subclasses :class:`LLMEngine` and calls :func:`run`; the
stock Dynamo 1.6.1 frontend discovers, routes to, streams from and cancels
the resulting worker exactly as it does a stock one.
"""

from . import telemetry
from .config import DisaggregationMode, ModelInput, RuntimeSettings, Settings, WorkerConfig
from .context import Context
from .embedding import ShutDownBeforeServing, serve
from .engine import (
    BaseEngine,
    ComponentSnapshot,
    DiffusionEngine,
    EngineConfig,
    GenerateChunk,
    GenerateRequest,
    KvEventSource,
    LLMEngine,
    LlmRegistration,
    PushSource,
    RawEngine,
    RawRequest,
    RawResponseChunk,
    ZmqSource,
)
from .errors import (
    Cancelled,
    CannotConnect,
    ConnectionTimeout,
    Disconnected,
    DynamoException,
    EngineShutdown,
    HttpError,
    InvalidArgument,
    StreamIncomplete,
    Unknown,
)
from .lifecycle import (
    BadTlsSettings,
    DiscoveryUnreachable,
    EngineStartFailed,
    SetupFailed,
    StartupError,
    UnknownRequestPlane,
    UnsupportedResponsePlane,
)
from .run import run
from .worker import Worker

__version__ = "0.1.0"

__all__ = [
    "BadTlsSettings",
    "BaseEngine",
    "Cancelled",
    "CannotConnect",
    "ComponentSnapshot",
    "ConnectionTimeout",
    "Context",
    "DiffusionEngine",
    "DisaggregationMode",
    "Disconnected",
    "DiscoveryUnreachable",
    "DynamoException",
    "EngineConfig",
    "EngineShutdown",
    "EngineStartFailed",
    "GenerateChunk",
    "GenerateRequest",
    "HttpError",
    "InvalidArgument",
    "KvEventSource",
    "LLMEngine",
    "LlmRegistration",
    "ModelInput",
    "PushSource",
    "RawEngine",
    "RawRequest",
    "RawResponseChunk",
    "RuntimeSettings",
    "Settings",
    "SetupFailed",
    "ShutDownBeforeServing",
    "StartupError",
    "StreamIncomplete",
    "Unknown",
    "UnknownRequestPlane",
    "UnsupportedResponsePlane",
    "Worker",
    "WorkerConfig",
    "ZmqSource",
    "run",
    "serve",
    "telemetry",
]
