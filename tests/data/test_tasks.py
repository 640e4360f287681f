"""One lookup for every kind of task: packaged records and the folders of a data dir."""
from __future__ import annotations

import pytest

from embedtune.data.pairs import PairTask
from embedtune.data.retrieval import RetrievalTask
from embedtune.data.sts import STS_TASKS, STSTask
from embedtune.data.tasks import kind_of, resolve_any_tasks
from embedtune.errors import ConfigError


@pytest.fixture
def data_dir(tmp_path):
    for folder in ("sts/mysts", "pairs/my-pairs", "retrieval/my-retrieval", "retrieval/.hidden", "pairs/twin",
                   "retrieval/twin"):
        (tmp_path / folder).mkdir(parents=True)
    return tmp_path


def test_names_of_every_kind_mix_in_the_order_given(data_dir):
    tasks = resolve_any_tasks(["my-retrieval", "STS12", "my-pairs", "SciFact", "twitterurlcorpus", "mysts"], data_dir)
    assert [kind_of(t) for t in tasks] == ["retrieval", "sts", "pair_classification", "retrieval",
                                           "pair_classification", "sts"]
    assert tasks[0] == RetrievalTask("my-retrieval") and tasks[1] is STS_TASKS["sts12"]
    assert tasks[2] == PairTask("my-pairs") and tasks[3].hub_id == "mteb/scifact"
    assert isinstance(tasks[5], STSTask) and tasks[5].name == "mysts"


def test_no_names_means_the_nine_sts_sets(data_dir):
    assert resolve_any_tasks(None, data_dir) == list(STS_TASKS.values())


def test_unknown_names_list_what_exists_including_local_folders(data_dir):
    with pytest.raises(ConfigError) as caught:
        resolve_any_tasks(["sts12", "nope", "my-pairz"], data_dir)
    message = str(caught.value)
    assert message.startswith("unknown task(s): nope, my-pairz; valid tasks: sts: sts12, ")
    assert "sickr, mysts; pair classification: sprintduplicatequestions" in message
    assert "twitterurlcorpus, my-pairs, twin; retrieval: scifact, nfcorpus, arguana, my-retrieval, twin" in message
    assert ".hidden" not in message and len(message.splitlines()) == 1


def test_a_name_under_two_kinds_is_ambiguous(data_dir):
    with pytest.raises(ConfigError, match="task name 'twin' is ambiguous: it exists under pairs/ and retrieval/"):
        resolve_any_tasks(["twin"], data_dir)


def test_without_a_data_dir_only_packaged_names_exist():
    assert [t.name for t in resolve_any_tasks(["arguana", "sprintduplicatequestions"], None)] == [
        "arguana", "sprintduplicatequestions"]
    with pytest.raises(ConfigError, match="unknown task"):
        resolve_any_tasks(["my-pairs"], None)
