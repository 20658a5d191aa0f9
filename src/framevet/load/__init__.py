"""Loading inputs: ELF objects, archives, raw stubs and assembly sources."""

from framevet.load.inputs import LoadedObject, load_path

__all__ = ["LoadedObject", "load_path"]
