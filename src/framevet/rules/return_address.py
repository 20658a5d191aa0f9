"""return-address-overwrite is checked together with caller-frame-write (caller_frame.py)."""

from framevet.rules.caller_frame import RETURN_ADDRESS

__all__ = ["RETURN_ADDRESS"]
