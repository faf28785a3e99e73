"""The registry verb prune rests on: DELETE of a manifest by digest, and its refusals."""

from __future__ import annotations

import pytest

from mirror.errors import RegistryError
from mirror.reference import Digest
from tests.unit.conftest import RecordingSleep
from tests.unit.fakes import FakeRegistry, make_image, sha256

REPO = "team/app"


async def test_delete_manifest_deletes_by_digest_and_says_whether_it_was_there(
    sleeps: RecordingSleep,
) -> None:
    fake = FakeRegistry("registry.test")
    image = make_image(1)
    fake.seed(REPO, "v1", image)
    digest = Digest(image.digest)
    fake.fail(202, method="DELETE", times=1)
    fake.fail(404, method="DELETE", code="MANIFEST_UNKNOWN", times=1)

    async with fake.client(sleep=sleeps) as registry:
        assert await registry.delete_manifest(REPO, digest) is True
        assert await registry.delete_manifest(REPO, digest) is False

    first, _ = fake.find("DELETE", "manifest")
    assert first.path == f"/v2/{REPO}/manifests/{digest}"


async def test_a_registry_with_deletes_off_is_a_refusal_carrying_405_unsupported(
    sleeps: RecordingSleep,
) -> None:
    fake = FakeRegistry("registry.test")  # answers DELETE 405 UNSUPPORTED, as distribution
    digest = Digest(sha256(b"x"))

    async with fake.client(sleep=sleeps) as registry:
        with pytest.raises(RegistryError) as raised:
            await registry.delete_manifest(REPO, digest)

    assert raised.value.status == 405 and "UNSUPPORTED" in raised.value.codes
    assert len(fake.find("DELETE", "manifest")) == 1, "a refusal is not retried"
