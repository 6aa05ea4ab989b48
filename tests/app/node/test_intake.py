"""app.node.intake: what ``Intake.receive`` takes into a real spool and what it refuses, and why.

A valid CT instance is spooled once and announced once; a resend is neither stored nor announced
again; refusals (not DICOM, unreadable, missing UIDs, another study, an unserved modality) leave the
spool empty and carry the instance's SOP UIDs where it has them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage, DeflatedExplicitVRLittleEndian

from app.node.intake import Intake, Received, Refused
from app.node.spool import Spool, key_of
from tests.app.fuzz.builders import ct_bytes, ct_dataset, dicom_bytes

SOP_INSTANCE = "1.2.826.0.1.3680043.8.498.1"
STUDY = "1.2.826.0.1.3680043.8.498.2"


@dataclass
class Node:
    spool: Spool
    served: list[str] = field(default_factory=lambda: ["ct"])
    announced: int = 0

    def intake(self) -> Intake:
        return Intake(self.spool, lambda: self.served, self.announce)

    def announce(self) -> None:
        self.announced += 1


@pytest.fixture()
def node(tmp_path: Path) -> Node:
    return Node(Spool(tmp_path / "spool"))


def refusal(node: Node, data: bytes, study: str | None = None) -> Refused:
    with pytest.raises(Refused) as refused:
        node.intake().receive(data, study)
    assert node.spool.count("received") == 0 and node.announced == 0  # nothing kept, nobody told
    return refused.value


def test_a_valid_instance_is_spooled_and_announced_once(node: Node) -> None:
    data = ct_bytes()
    received = node.intake().receive(data)
    assert received == Received(CTImageStorage, SOP_INSTANCE, new=True)
    assert node.announced == 1
    key = key_of(SOP_INSTANCE)
    assert node.spool.state_of(key) == "received"
    (item,) = node.spool.items("received")
    assert node.spool.read(item) == data  # the bytes as received
    assert (item.record.study_instance_uid, item.record.series_instance_uid) == (STUDY, "1.2.826.0.1.3680043.8.498.3")


def test_an_instance_of_the_requested_study_is_taken(node: Node) -> None:
    assert node.intake().receive(ct_bytes(), study=STUDY).new


def test_a_resend_is_not_stored_or_announced_again(node: Node) -> None:
    intake = node.intake()
    intake.receive(ct_bytes())
    again = intake.receive(ct_bytes())
    assert again == Received(CTImageStorage, SOP_INSTANCE, new=False)
    assert node.announced == 1 and node.spool.count("received") == 1


def test_a_second_instance_is_announced_too(node: Node) -> None:
    intake = node.intake()
    intake.receive(ct_bytes())
    assert intake.receive(ct_bytes(SOPInstanceUID="1.2.826.0.1.3680043.8.498.99")).new
    assert node.announced == 2 and node.spool.count("received") == 2


def test_a_missing_sop_class_is_taken_from_the_file_meta(node: Node) -> None:
    received = node.intake().receive(ct_bytes(SOPClassUID=None))  # file meta still names CT Image Storage
    assert received.sop_class_uid == CTImageStorage and received.new


@pytest.mark.parametrize("data", [b"", b"not dicom at all", b"\x89PNG\r\n\x1a\n" + bytes(200)])
def test_bytes_that_are_not_dicom_are_refused(node: Node, data: bytes) -> None:
    refused = refusal(node, data)
    assert refused.reason == "not a DICOM Part 10 file"
    assert not refused.unsupported and not refused.wrong_study
    assert (refused.sop_class_uid, refused.sop_instance_uid) == ("", "")


def test_an_unreadable_header_is_refused(node: Node) -> None:
    deflated = dicom_bytes(ct_dataset(), DeflatedExplicitVRLittleEndian)
    (group_length,) = struct.unpack("<I", deflated[140:144])
    corrupt = deflated[: 144 + group_length] + b"\xff" * 64  # the deflated dataset is not deflate
    assert refusal(node, corrupt).reason == "The deflated DICOM dataset is corrupt; send the complete file."


def test_an_instance_without_a_sop_instance_uid_is_refused(node: Node) -> None:
    ds = ct_dataset()
    del ds.SOPInstanceUID
    refused = refusal(node, dicom_bytes(ds))
    assert refused.reason == "no SOP Class or SOP Instance UID"
    assert refused.sop_class_uid == CTImageStorage


def test_an_instance_without_a_study_uid_is_refused_with_its_uids(node: Node) -> None:
    refused = refusal(node, ct_bytes(StudyInstanceUID=None))
    assert refused.reason == "no Study Instance UID (0020,000D)"
    assert (refused.sop_class_uid, refused.sop_instance_uid) == (CTImageStorage, SOP_INSTANCE)
    assert not refused.unsupported and not refused.wrong_study


def test_an_instance_of_another_study_is_refused_as_wrong_study(node: Node) -> None:
    refused = refusal(node, ct_bytes(), study="1.2.3.4.5")
    assert refused.wrong_study and not refused.unsupported
    assert "1.2.3.4.5" in refused.reason
    assert (refused.sop_class_uid, refused.sop_instance_uid) == (CTImageStorage, SOP_INSTANCE)


@pytest.mark.parametrize(("modality", "named"), [("MR", "MR"), ("US", "US"), (None, "missing")])
def test_a_modality_without_a_model_is_refused_as_unsupported(node: Node, modality: str | None, named: str) -> None:
    refused = refusal(node, ct_bytes(Modality=modality))
    assert refused.unsupported and not refused.wrong_study
    assert refused.reason == f"Modality {named} has no model on this node"
    assert (refused.sop_class_uid, refused.sop_instance_uid) == (CTImageStorage, SOP_INSTANCE)


def test_the_served_modalities_are_asked_at_each_receive(node: Node) -> None:
    intake = node.intake()
    node.served = ["mr"]
    with pytest.raises(Refused) as refused:
        intake.receive(ct_bytes())
    assert refused.value.unsupported
    node.served = ["mr", "ct"]  # a CT model loaded since
    assert intake.receive(ct_bytes()).new and node.announced == 1


def test_the_modality_tag_is_read_without_regard_to_case(node: Node) -> None:
    assert node.intake().receive(ct_bytes(Modality="ct")).new


def test_refused_is_an_exception_carrying_its_reason() -> None:
    error = Refused("because", unsupported=True, sop_class_uid="1.2", sop_instance_uid="1.2.3")
    assert str(error) == "because" and error.reason == "because"
    assert (error.unsupported, error.wrong_study, error.sop_class_uid, error.sop_instance_uid) == (True, False, "1.2", "1.2.3")



def test_a_truncated_instance_is_refused_before_it_is_acknowledged(node: Node) -> None:
    """Its header alone reads; the pixel data is short: the sender must not hear "stored"."""
    data = dicom_bytes(ct_dataset())
    refused = refusal(node, data[: len(data) - 100])
    assert "Pixel Data" in refused.reason or "pixel" in refused.reason.lower()
