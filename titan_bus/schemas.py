"""Payload schemas of the built-in topics, and JSON Schema for configured ones.

A topic's payload shape never changes once published: a new shape is a new
version (``chat.v2``), never an edit of ``chat.v1``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal, Protocol

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic import ValidationError as PydanticValidationError

from titan_bus.errors import ConfigError, ValidationError

TOPIC_NAME = re.compile(r"^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)*\.v[1-9][0-9]{0,3}$")


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChatV1(_Payload):
    """``chat.v1``: one message in a conversation."""

    conversation_id: str = Field(min_length=1)
    role: Literal["user", "assistant", "system"]
    text: str


class FsV1(_Payload):
    """``fs.v1``: a change to a file; ``src_path`` is given for moves only."""

    change: Literal["created", "modified", "deleted", "moved"]
    path: str = Field(min_length=1)
    size: int | None = Field(default=None, ge=0, description="bytes")
    src_path: str | None = None

    @model_validator(mode="after")
    def _src_path_for_moves(self) -> FsV1:
        if self.change == "moved" and not self.src_path:
            raise ValueError("src_path is required when change is 'moved'")
        if self.change != "moved" and self.src_path is not None:
            raise ValueError("src_path is only allowed when change is 'moved'")

        return self


class SystemV1(_Payload):
    """``system.v1``: a lifecycle or health notice from a Titan module."""

    name: str = Field(min_length=1)
    details: dict[str, Any] = Field(default_factory=dict)


class PluginV1(_Payload):
    """``plugin.v1``: an event raised by a third-party plugin."""

    plugin: str = Field(min_length=1)
    name: str = Field(min_length=1)
    data: dict[str, Any] = Field(default_factory=dict)


BUILTIN_PAYLOADS: dict[str, type[BaseModel]] = {
    "chat.v1": ChatV1,
    "fs.v1": FsV1,
    "system.v1": SystemV1,
    "plugin.v1": PluginV1,
}


class PayloadValidator(Protocol):
    """Checks a payload for one topic and returns its normalised JSON object."""

    def __call__(self, topic: str, data: Mapping[str, Any]) -> dict[str, Any]: ...


def model_validator_for(model: type[BaseModel]) -> PayloadValidator:
    """Return a validator that checks payloads with a pydantic model."""

    def validate(topic: str, data: Mapping[str, Any]) -> dict[str, Any]:
        try:
            payload = model.model_validate(data)
        except PydanticValidationError as exc:
            raise ValidationError(_pydantic_message(topic, exc)) from exc

        return payload.model_dump(mode="json", exclude_none=True)

    return validate


def json_schema_validator_for(schema: Mapping[str, Any]) -> PayloadValidator:
    """Return a validator for a JSON Schema (draft 2020-12) given in config.

    Raises:
        ConfigError: the schema itself is not a valid JSON Schema.
    """
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ConfigError(f"invalid JSON Schema: {exc.message}") from exc
    checker = jsonschema.Draft202012Validator(schema)

    def validate(topic: str, data: Mapping[str, Any]) -> dict[str, Any]:
        error = jsonschema.exceptions.best_match(checker.iter_errors(dict(data)))
        if error is not None:
            where = ".".join(str(p) for p in error.absolute_path) or "payload"
            raise ValidationError(
                f"{topic}: invalid payload at {where}: {error.message}"
            )

        return dict(data)

    return validate


def _pydantic_message(topic: str, exc: PydanticValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "payload"
        problems.append(f"{where}: {error['msg']}")

    return f"{topic}: invalid payload: " + "; ".join(problems)
