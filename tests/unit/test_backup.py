"""Backups of moving tags: the template, and the copy keeping a tag's old manifest under the
backup tag before the tag moves (read from the target, never pulled upstream)."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator

import pytest
from pydantic import ValidationError

from mirror.config import Config, describe_validation_error
from mirror.copy import Copier, backup_namer
from mirror.registry import Registry
from tests.unit.fakes import FakeRegistry, make_image

SRC, DST = "library/app", "mirror/app"


def test_a_template_names_the_backup_from_the_tag_and_the_date() -> None:
    today = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d")
    assert backup_namer("{tag}-prev")("1.22") == "1.22-prev"
    assert backup_namer("{tag}-{date:%Y%m%d}")("latest") == f"latest-{today}"
    assert backup_namer(lambda tag: f"old-{tag}")("2") == "old-2"


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("prev", "must contain {tag}"),
        ("{tag}-{when}", "unknown field {when}"),
        ("{tag}:{date}", "not a valid tag"),
        ("{tag", "bad template"),
        ("{tag}-{date:%Y %m}", "not a valid tag"),
        ("{tag}", "names the tag itself"),
    ],
)
def test_a_bad_template_says_what_is_wrong(template: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        backup_namer(template)


def test_a_bad_template_in_the_config_names_the_key() -> None:
    with pytest.raises(ValidationError) as caught:
        Config(mirrors=[{"source": "a/b", "backup": "prev"}])
    assert describe_validation_error(caught.value).startswith("mirrors[0].backup: ")
    merged = Config(defaults={"backup": "{tag}-old"}, mirrors=[{"source": "a/b"}])
    assert merged.mirrors[0].backup == "{tag}-old"


@pytest.fixture
async def registries() -> AsyncIterator[tuple[FakeRegistry, FakeRegistry, Registry, Registry]]:
    src, dst = FakeRegistry("source.test"), FakeRegistry("target.test")
    async with src.client() as source, dst.client() as target:
        yield src, dst, source, target


async def test_a_moving_tag_is_backed_up_from_the_target_before_it_moves(
    registries: tuple[FakeRegistry, FakeRegistry, Registry, Registry],
) -> None:
    src, dst, source, target = registries
    old, new = make_image(1), make_image(2)
    src.seed(SRC, "latest", new)
    dst.seed(DST, "latest", old)

    result = await Copier(source, target, backup="{tag}-prev").copy(SRC, "latest", DST)

    assert result.status == "copied", result.error
    assert (result.previous, result.backup) == (old.digest, "latest-prev")
    assert dst.tags[DST] == {"latest": new.digest, "latest-prev": old.digest}
    assert [r.url.path for r in src.find("GET", "manifest")] == [
        f"/v2/{SRC}/manifests/{new.digest}"
    ]
    puts = [r.url.path.rsplit("/", 1)[1] for r in dst.find("PUT", "manifest")]
    assert puts == ["latest-prev", "latest"]  # the backup first: the old digest is never lost


async def test_no_backup_for_a_first_copy_an_unchanged_tag_or_a_dry_run(
    registries: tuple[FakeRegistry, FakeRegistry, Registry, Registry],
) -> None:
    src, dst, source, target = registries
    image = make_image(1)
    src.seed(SRC, "1", image)
    src.seed(SRC, "2", make_image(2))
    dst.seed(DST, "2", make_image(3))

    first = await Copier(source, target, backup="{tag}-prev").copy(SRC, "1", DST)
    same = await Copier(source, target, backup="{tag}-prev").copy(SRC, "1", DST)
    dry = await Copier(source, target, backup="{tag}-prev", dry_run=True).copy(SRC, "2", DST)

    assert (first.status, same.status, dry.status) == ("copied", "skipped", "planned")
    assert first.backup is same.backup is dry.backup is None
    assert not any(t.endswith("-prev") for t in dst.tags[DST])


async def test_a_backup_that_cannot_be_kept_stops_the_tag_from_moving(
    registries: tuple[FakeRegistry, FakeRegistry, Registry, Registry],
) -> None:
    src, dst, source, target = registries
    old, new = make_image(1), make_image(2)
    src.seed(SRC, "latest", new)
    dst.seed(DST, "latest", old)
    dst.fail(403, method="PUT", kind="manifest", code="DENIED")

    result = await Copier(source, target, backup="{tag}-prev").copy(SRC, "latest", DST)

    assert result.status == "failed"
    assert result.error is not None and "backup of" in result.error
    assert "not moved" in result.error
    assert dst.tags[DST] == {"latest": old.digest}
