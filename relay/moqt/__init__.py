"""MoQT draft-14 codec: varints, errors, control messages, data-plane objects (no I/O here).

Import the names from this package: `from relay.moqt import Subscribe, encode_control, ControlStreamParser`.
Session errors carry their wire code (`exc.code`); `NeedMoreData` is not an error (wait for bytes).
"""

from relay.moqt import errors, messages, objects, varint
from relay.moqt.errors import *  # noqa: F403
from relay.moqt.messages import *  # noqa: F403
from relay.moqt.objects import *  # noqa: F403
from relay.moqt.varint import *  # noqa: F403

__all__ = sorted({*errors.__all__, *messages.__all__, *objects.__all__, *varint.__all__})
