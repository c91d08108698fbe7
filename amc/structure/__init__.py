"""Model structure: tracing (:func:`trace`), the name-keyed :class:`DependencyGraph`, and layer kinds."""
from .graph import ChannelGroup, DependencyGraph, GroupName, Keep, Kept, Layer, LayerName, Layout, Segment
from .layers import LayerKind, kind_of
from .trace import trace

__all__ = ["ChannelGroup", "DependencyGraph", "GroupName", "Keep", "Kept", "Layer", "LayerKind", "LayerName",
           "Layout", "Segment", "kind_of", "trace"]
