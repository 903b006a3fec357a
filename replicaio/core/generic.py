"""Generic classes that the compiled build can make extension types (ADR 0043).

Cython makes a class an extension type only when its first base is one (or
``object``), and ``typing.Generic`` is not: ``class Line(Generic[T])`` stays an
ordinary class compiled, with every attribute a generic look-up. The hot
generic classes (:class:`~replicaio.core.lines.Line`,
:class:`~replicaio.core.scheduler.Task`, :class:`~replicaio.core.context.Link`)
are written ``class Line(Slotted, Generic[T])`` instead, with this module's two
names:

* :class:`Slotted`, an empty class with ``__slots__ = ()``: the first base,
  declared an extension type in ``generic.pxd``, so the class after it can be
  one (its own ``.pxd`` says ``cdef class Line(Slotted)``).
* ``Generic``: for mypy, ``typing.Generic`` itself, so ``Line[int]`` is checked
  as before; at run time a plain class with no slots whose subscription is the
  class itself (``Line[int] is Line``), because Cython creates an extension
  type's bases without resolving ``__mro_entries__`` (a ``typing`` alias among
  them fails at import).

What a reader may rely on: a class written so behaves as the ``Generic[T]``
class it was, compiled or not (instances, ``isinstance``, subclasses,
annotations), except that ``Line[int]`` at run time is ``Line`` itself, not
a ``typing`` alias (no code here subscribes one outside annotations).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing import Generic as Generic
else:

    class Generic:
        """Run-time stand-in of ``typing.Generic`` (see the module docstring)."""

        __slots__ = ()

        def __class_getitem__(cls, parameters: Any) -> type:
            return cls


class Slotted:
    """The first base of a generic class compiled as an extension type."""

    __slots__ = ()
