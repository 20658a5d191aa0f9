"""Stage 1: loading inputs: ELF objects, archives, raw stubs and assembly sources."""

from framevet.load.inputs import load_path
from framevet.load.object import LoadedObject

__all__ = ["LoadedObject", "load_path"]
