"""A calcium-scoring node next to Orthanc (``cac orthanc``): every stable CT series scored, results in its study.

- :mod:`cacnet.node.runner`: the node (:class:`Node`): follows Orthanc's change feed, skips what is not a CT
  axial series, triages and scores the rest, stores the DICOM SEG and SR (or a "not scored" SR with the
  reason) in the same study, attaches the HTML report, and keeps durable state.
- :mod:`cacnet.node.client`: Orthanc's REST API (credentials from the environment or a file, TLS verified).
- :mod:`cacnet.node.state`: the SQLite state (place in the feed, queue, outcome of every series).
- :mod:`cacnet.node.refusal`: the "not scored" SR.
- :mod:`cacnet.node.status`: ``cac orthanc status``.

See docs/dicom.md and docs/deployment.md.
"""

from .client import Credentials, OrthancClient, load_credentials
from .runner import Node, NodeConfig, classify_series
from .status import format_status, node_status

__all__ = ["Credentials", "Node", "NodeConfig", "OrthancClient", "classify_series", "format_status",
           "load_credentials", "node_status"]
