"""Where each way of running mirror keeps its state: a directory that survives restarts and is
writable by the service's user, on a root filesystem that is otherwise read-only. (The unit's
StateDirectory= is checked with the rest of the unit in test_deploy.)"""

from __future__ import annotations

from tests.integration.test_deploy import (
    COMPOSE,
    DOCKERFILE,
    dockerfile_instructions,
    final_stage,
    manifest,
    mirror_container,
    pod_spec,
    yaml_documents,
)

STATE_DIR = "/var/lib/mirror"


def test_the_image_declares_the_state_directory_a_volume_its_user_owns() -> None:
    stage = final_stage(dockerfile_instructions(DOCKERFILE.read_text()))
    words = [word for word, _ in stage]
    args = {word: rest for word, rest in stage}
    created = [rest for word, rest in stage if word == "RUN" and STATE_DIR in rest]

    assert f"STATE_DIRECTORY={STATE_DIR}" in args["ENV"].split()
    assert args["VOLUME"].split() == [STATE_DIR]
    user = args["USER"].split(":")[0]
    assert created and f"-o {user}" in created[0], "the runtime user owns the directory"
    # Changes to a volume's path after VOLUME are dropped: ownership must come first.
    assert max(i for i, (w, r) in enumerate(stage) if w == "RUN" and STATE_DIR in r) < words.index(
        "VOLUME"
    )


def test_compose_keeps_the_state_on_a_named_volume() -> None:
    compose = yaml_documents(COMPOSE)[0]
    mounts = compose["services"]["mirror"]["volumes"]
    [state] = [m for m in mounts if m.split(":")[1] == STATE_DIR]
    assert state.split(":")[0] in compose["volumes"]


def test_each_statefulset_replica_keeps_its_state_on_its_own_volume() -> None:
    statefulset = manifest("statefulset.yaml")
    container = mirror_container(pod_spec(statefulset))
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == STATE_DIR]
    [claim] = statefulset["spec"]["volumeClaimTemplates"]

    assert claim["metadata"]["name"] == mount["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert not mount.get("readOnly")
