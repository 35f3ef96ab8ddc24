"""Cluster model: device types, links, nodes, the validated Cluster, the catalog and discovery."""

from hetero.cluster.catalog import catalog, resolve
from hetero.cluster.spec import Cluster, DeviceType, Link, Node

__all__ = ["Cluster", "DeviceType", "Link", "Node", "catalog", "resolve"]
