"""Request bodies decoded once, the strict way, as the OpenAPI document describes them.

Litestar decodes a handler's ``data`` leniently (``strict=False``): it reads the number ``0``
as a time (the Unix epoch) and ``"7"`` as an integer, which the document does not allow.
A handler declares ``data: T`` with ``dto=StrictBody[T]``: Litestar then hands the raw body
to :meth:`StrictBody.decode_bytes`, which decodes it once with
:func:`notifier.api_types.decode_strictly`, and documents ``T`` exactly as it would without
the DTO (same schema component, closed by ``ClosedStructSchemaPlugin``).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec
from litestar.dto import AbstractDTO
from litestar.exceptions import SerializationException
from litestar.typing import FieldDefinition

from notifier.api_types import decode_strictly

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator
    from litestar.dto import DTOFieldDefinition
    from litestar.dto._backend import DTOBackend
    from litestar.openapi.spec import Reference, Schema

T = TypeVar("T")


class StrictBody(AbstractDTO[T], Generic[T]):
    """A DTO that only decodes: the body as ``T``, strictly, in one pass.

    A body that is not JSON is a 400 as before (Litestar turns ``SerializationException``
    into one, and :mod:`notifier.http.problems` names the body); a value that does not fit
    ``T`` is a 422 naming the field. Use it for requests only (``return_dto=None``).
    """

    @classmethod
    def generate_field_definitions(
        cls, model_type: type[Any]
    ) -> Generator[DTOFieldDefinition, None, None]:
        """Not used: this DTO builds no transfer model."""
        yield from ()

    @classmethod
    def detect_nested_field(cls, field_definition: FieldDefinition) -> bool:
        """Not used: this DTO builds no transfer model."""
        return False

    @classmethod
    def create_for_field_definition(
        cls,
        field_definition: FieldDefinition,
        handler_id: str,
        backend_cls: type[DTOBackend] | None = None,
    ) -> None:
        """Nothing to build: :meth:`decode_bytes` decodes with msgspec directly."""

    @classmethod
    def create_openapi_schema(
        cls, field_definition: FieldDefinition, handler_id: str, schema_creator: SchemaCreator
    ) -> Reference | Schema:
        """The schema Litestar gives ``T`` itself."""
        return schema_creator.for_field_definition(
            FieldDefinition.from_annotation(
                cls.model_type, kwarg_definition=field_definition.kwarg_definition
            )
        )

    def decode_bytes(self, value: bytes) -> Any:
        """The body as ``T``; a 422 naming the field at fault, a 400 if it is not JSON."""
        try:
            return decode_strictly(value, self.model_type)
        except msgspec.DecodeError as exc:
            raise SerializationException(str(exc)) from exc

    def decode_builtins(self, value: dict[str, Any]) -> Any:
        """Form bodies are not accepted by the API; decoded strictly all the same."""
        return msgspec.convert(value, self.model_type)
