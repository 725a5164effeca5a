"""Sending DICOM files to a DICOM node (a PACS, Orthanc, a viewer) with C-STORE (pynetdicom).

``cac score ... -o OUT --dicom --send HOST:PORT[:AET]`` sends the SEG and SR
of each scan after writing them. The node is given as ``HOST:PORT`` with an
optional called AE title (default ``ANY-SCP``; IPv6 hosts in brackets,
``[::1]:4242:ORTHANC``). The calling AE title is ``CACTOOLKIT`` unless given
(``--calling-aet``); a PACS that only accepts known nodes must list it.

Failures raise :class:`~cacnet.errors.SendError` (``cac`` exits 6) with what
went wrong: the host cannot be resolved, nothing listens on the port
(connection refused), no answer within the timeout, the node rejects the
association (with the reason it gave) or does not accept the SOP class, or
a C-STORE returns a failure status. Files are never removed: they stay in
the output folder to send again.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import SendError, UsageError

__all__ = ["DEFAULT_CALLED_AET", "DEFAULT_CALLING_AET", "DicomNode", "check_ae_title", "parse_node", "send_files"]

DEFAULT_CALLED_AET = "ANY-SCP"
DEFAULT_CALLING_AET = "CACTOOLKIT"

_NODE = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]+)):(?P<port>[^:]+)(?::(?P<aet>.*))?$")


@dataclass(frozen=True)
class DicomNode:
    """A DICOM node to send to.

    Attributes
    ----------
    host : str
        Host name or IP address.
    port : int
        DICOM port (1-65535).
    aet : str
        Called AE title (1-16 characters).
    """

    host: str
    port: int
    aet: str = DEFAULT_CALLED_AET

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port} (AE title {self.aet})"


def check_ae_title(aet: str, what: str) -> str:
    """``aet`` if it is a valid AE title (1-16 printable ASCII characters, no backslash), else :class:`UsageError`.

    ``what`` names it in the message (e.g. ``--calling-aet``).
    """
    if not 1 <= len(aet.strip()) <= 16 or len(aet) > 16 or "\\" in aet or any(ord(c) < 32 or ord(c) > 126 for c in aet):
        raise UsageError(f"{what} must be 1-16 printable ASCII characters without a backslash; got {aet!r}.")
    return aet


def parse_node(text: str) -> DicomNode:
    """``HOST:PORT[:AET]`` as a :class:`DicomNode`.

    Raises
    ------
    UsageError
        When the text is not of that form, the port is not 1-65535 or the
        AE title is not 1-16 printable characters.
    """
    m = _NODE.match(text.strip())
    if not m:
        raise UsageError(f"--send takes HOST:PORT or HOST:PORT:AET (e.g. pacs.example.org:104:PACS or "
                         f"[::1]:4242:ORTHANC); got {text!r}.")
    host = m.group("v6") or m.group("host")
    try:
        port = int(m.group("port"))
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise UsageError(f"--send: the port must be a number from 1 to 65535; got {m.group('port')!r} in {text!r}.")
    aet = m.group("aet")
    return DicomNode(host=host, port=port, aet=check_ae_title(aet, "--send: the called AE title") if aet is not None
                     else DEFAULT_CALLED_AET)


def _reach(node: DicomNode, timeout: float) -> None:
    """Open and close a TCP connection, so that an unreachable node gets a specific message."""
    try:
        with socket.create_connection((node.host, node.port), timeout=timeout):
            pass
    except socket.gaierror as exc:
        raise SendError(f"cannot send to {node}: the host name {node.host!r} cannot be resolved ({exc.strerror}).") \
            from None
    except ConnectionRefusedError:
        raise SendError(f"cannot send to {node}: connection refused (nothing listens on port {node.port} of "
                        f"{node.host}; is the DICOM node running, and is the port right?).") from None
    except (TimeoutError, socket.timeout):
        raise SendError(f"cannot send to {node}: no answer within {timeout:g} s (host down, or a firewall drops "
                        "the connection).") from None
    except OSError as exc:
        raise SendError(f"cannot send to {node}: {exc.strerror or exc}.") from None


def send_files(paths: Sequence[Path | str], node: DicomNode, *, calling_aet: str = DEFAULT_CALLING_AET,
               timeout: float = 30.0) -> list[str]:
    """Send DICOM files to ``node`` with C-STORE, in one association.

    Parameters
    ----------
    paths : sequence of path
        DICOM files (Part 10), e.g. the SEG and SR of :func:`cacnet.outputs.dicom.write_dicom_outputs`.
    node : DicomNode
        Where to send (:func:`parse_node`).
    calling_aet : str
        Our AE title.
    timeout : float
        Seconds to wait for the connection, the association and each answer.

    Returns
    -------
    list of str
        SOP Instance UIDs stored, in the order sent.

    Raises
    ------
    SendError
        The node cannot be reached, rejects the association or a SOP class, or a
        store fails; the message says which and how many files were stored first.
    """
    try:
        import pydicom
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom import AE
        from pynetdicom.status import code_to_category
    except ImportError as exc:
        raise UsageError(f"sending needs the dicom extra: pip install 'cac-toolkit[dicom]' ({exc}).") from None

    check_ae_title(calling_aet, "the calling AE title")
    datasets = []
    for p in paths:
        try:
            datasets.append(pydicom.dcmread(p))
        except Exception as exc:  # noqa: BLE001 - any unreadable file: say which
            raise SendError(f"cannot send {p}: not a readable DICOM file ({exc}).") from None
    if not datasets:
        return []
    _reach(node, timeout)
    ae = AE(ae_title=calling_aet)
    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    contexts: dict[str, set] = {}
    for ds in datasets:
        syntaxes = contexts.setdefault(str(ds.SOPClassUID), {ExplicitVRLittleEndian, ImplicitVRLittleEndian})
        syntaxes.add(str(ds.file_meta.TransferSyntaxUID))
    for sop_class, syntaxes in contexts.items():
        ae.add_requested_context(sop_class, sorted(syntaxes))
    assoc = ae.associate(node.host, node.port, ae_title=node.aet)
    if assoc.is_rejected:
        rsp = assoc.acceptor.primitive
        why = (f"{rsp.result_str}, {rsp.source_str}: {rsp.reason_str}" if rsp is not None else "no reason given")
        raise SendError(f"{node} rejected the association from calling AE title {calling_aet!r} ({why}); check the "
                        "called AE title and that the node accepts this calling AE title.")
    if not assoc.is_established:
        raise SendError(f"{node} did not establish an association (aborted or no answer within {timeout:g} s; "
                        "the node accepted none of the SOP classes sent, or is not a DICOM node).")
    sent: list[str] = []
    try:
        for ds, p in zip(datasets, paths):
            uid = str(ds.SOPInstanceUID)
            accepted = [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == ds.SOPClassUID]
            if not accepted:
                raise SendError(f"{node} does not accept {ds.SOPClassUID.name} objects ({p}); "
                                f"{len(sent)} of {len(datasets)} files were stored.")
            status = assoc.send_c_store(ds)
            code = int(status.Status) if status is not None and "Status" in status else None
            if code is None:
                raise SendError(f"{node} sent no answer to the C-STORE of {p} (connection lost or timed out after "
                                f"{timeout:g} s); {len(sent)} of {len(datasets)} files were stored.")
            if code_to_category(code) not in ("Success", "Warning"):
                comment = str(status.get("ErrorComment", "")).strip()
                raise SendError(f"{node} refused to store {p}: status 0x{code:04X} ({code_to_category(code)}"
                                + (f": {comment}" if comment else "") + f"); {len(sent)} of {len(datasets)} "
                                "files were stored.")
            sent.append(uid)
    finally:
        if assoc.is_established:
            assoc.release()
    return sent
