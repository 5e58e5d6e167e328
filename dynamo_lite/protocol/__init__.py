"""Sans-IO codecs for the Dynamo 1.6.1 TCP request plane and response stream.

Nothing in this package touches a socket: every decoder is fed bytes and hands
back parsed frames, every encoder returns bytes. The transports in
:mod:`dynamo_lite.transport` move those bytes; the tests drive the codecs with
captured frames and with hypothesis.

Layering, outermost first (all integers big-endian):

* request frame  ``u16 path_len | path | u16 hdr_len | JSON headers | u32 len | payload``
  (:mod:`.request_plane`), answered by one ``u32 len | text`` reply each;
* TwoPart message ``u64 header_len | u64 body_len | u64 checksum | header | body``
  (:mod:`.twopart`), used for the request payload and every response-stream frame;
* the control header of a request and the response-stream control frames
  (:mod:`.control`);
* the request body and response items in the negotiated codec (:mod:`.codec`,
  :mod:`.items`).
"""

from .errors import FrameTooLarge, MalformedFrame, ProtocolError

__all__ = ["FrameTooLarge", "MalformedFrame", "ProtocolError"]
