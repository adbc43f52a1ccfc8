import hashlib
from importlib import resources

import pytest

from bmc_data.bridging.templates import (
    available_templates,
    load_template,
    parse_template,
)
from bmc_data.pairs.schema import Task


def test_bundled_templates_cover_every_task():
    assert {task for t in available_templates() for task in t.tasks} == set(Task)


@pytest.mark.parametrize("task", ["qa", "math", "instruction"])
def test_version_id_carries_content_hash(task):
    template = load_template(task)
    raw = next(p for p in resources.files("bmc_data.prompts").iterdir() if p.name.endswith(".yaml")
               and parse_template(p.read_bytes()).name == template.name).read_bytes()
    assert template.sha256 == hashlib.sha256(raw).hexdigest()
    assert template.version_id == f"{template.version}@{template.sha256[:12]}"


def test_qa_template_asks_for_verdict_and_renders_all_inputs():
    template = load_template("qa")
    assert template.requires_verdict
    messages = template.render(prompt="QUESTION", chosen="REFERENCE", rejected="STUDENT")
    assert messages[0]["role"] == "system"
    user = messages[-1]["content"]
    assert user.index("QUESTION") < user.index("REFERENCE") < user.index("STUDENT")
    assert "<verdict>" in user and "{" not in template.render_repair("bad")


def test_instruction_template_has_no_verdict():
    assert not load_template("instruction").requires_verdict


def test_any_edit_changes_the_version_id(tmp_path):
    template = load_template("qa")
    edited = template.text.replace("meticulous", "careful")
    path = tmp_path / "t.yaml"
    path.write_text(edited)
    assert load_template(path=path).version_id != template.version_id


def test_unknown_placeholder_is_rejected():
    raw = b"name: x\nversion: v\ntasks: [qa]\nuser: '{prompt} {nope}'\nrepair: '{error}'\n"
    with pytest.raises(ValueError, match="unknown placeholders"):
        parse_template(raw)
