"""The server's issue-36 features, over HTTP on loopback and with the real openai client: token-id input,
Matryoshka `dimensions`, `prompt_name`, `usage`, GET /metrics (parsed strictly as Prometheus text), batching by a
token budget and its off switch, and bad values of every new request field."""
from __future__ import annotations

import base64
import http.client
import json
import math
import re

import numpy as np
import pytest

from embedtune.models.embedder import Embedder
from embedtune.serve import ServeLimits, start_server
from tests.test_serve import run_concurrently

openai = pytest.importorskip("openai")

MATRYOSHKA = (16, 32)
PROMPTS = {"query": "query: ", "document": "the "}  # named prompts are prefixes (sentence-transformers, TEI)


def load(tiny_model_dir, tiny_adapter_dir, **settings) -> Embedder:
    embedder = Embedder(str(tiny_model_dir), adapter=str(tiny_adapter_dir), max_length=64, precision="fp32")
    for name, value in settings.items():  # what models/ loads from an export that records them
        setattr(embedder, name, value)
    return embedder


@pytest.fixture(scope="module")
def plain(tiny_model_dir, tiny_adapter_dir):
    return load(tiny_model_dir, tiny_adapter_dir)


@pytest.fixture(scope="module")
def nested(tiny_model_dir, tiny_adapter_dir):
    """A model trained with Matryoshka whose export records query/document prompts."""
    return load(tiny_model_dir, tiny_adapter_dir, matryoshka_dims=MATRYOSHKA, prompts=dict(PROMPTS))


@pytest.fixture(scope="module")
def plain_server(plain):
    with start_server(plain, limits=ServeLimits(max_tokens=400)) as server:
        yield server


@pytest.fixture(scope="module")
def nested_server(nested):
    with start_server(nested, limits=ServeLimits(max_tokens=400)) as server:
        yield server


def client(server, key: str = "unused"):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=30)


def post(server, body, path: str = "/v1/embeddings", headers: dict | None = None) -> tuple[int, dict | str]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        method = "GET" if body is None else "POST"
        data = None if body is None else (body if isinstance(body, str) else json.dumps(body)).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        raw = response.read().decode()
        if response.getheader("Content-Type", "").startswith("application/json"):
            return response.status, json.loads(raw)
        return response.status, raw
    finally:
        conn.close()


def rows(response) -> np.ndarray:
    """The vectors of an answer (asked for as base64, the client hands over the string: decoded here)."""
    return np.array([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") if isinstance(d.embedding, str)
                     else d.embedding for d in response.data], dtype=np.float32)


# ---- token ids --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_token_ids_give_the_vectors_of_their_text(plain_server, plain, tiny_texts, encoding):
    texts = tiny_texts[:3]
    ids = [row[:-1] for row in plain.tokenize(texts)]  # the tokenizer's ids without the EOS: the server adds it
    expected = plain.encode(texts)
    many = client(plain_server).embeddings.create(model="m", input=ids, encoding_format=encoding)
    assert (rows(many) * expected).sum(1).min() >= 0.9999
    assert many.usage.prompt_tokens == many.usage.total_tokens == sum(len(row) + 1 for row in ids)
    one = client(plain_server).embeddings.create(model="m", input=ids[0], encoding_format=encoding)
    assert len(one.data) == 1 and float(rows(one)[0] @ expected[0]) >= 0.9999
    with_eos = client(plain_server).embeddings.create(model="m", input=[ids[1] + [plain.eos_id]])
    assert float(rows(with_eos)[0] @ expected[1]) >= 0.9999  # an EOS already there is not doubled
    assert with_eos.usage.prompt_tokens == len(ids[1]) + 1


# ---- dimensions -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_a_matryoshka_model_shortens_and_renormalises(nested_server, nested, tiny_texts, encoding):
    texts = tiny_texts[:4]
    full = nested.encode(texts)
    for size in MATRYOSHKA:
        got = rows(client(nested_server).embeddings.create(model="m", input=texts, dimensions=size,
                                                           encoding_format=encoding))
        head = full[:, :size] / np.linalg.norm(full[:, :size], axis=1, keepdims=True)
        assert got.shape == (len(texts), size)
        np.testing.assert_allclose(got, head, atol=2e-3)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    whole = rows(client(nested_server).embeddings.create(model="m", input=texts, dimensions=64))
    assert whole.shape == (len(texts), 64)  # the full width is always allowed


def test_a_model_without_matryoshka_refuses_to_shorten(plain_server, tiny_texts):
    with pytest.raises(openai.BadRequestError) as caught:
        client(plain_server).embeddings.create(model="m", input=tiny_texts[:2], dimensions=32)
    error = caught.value.body
    assert error["code"] == "invalid_dimensions" and error["param"] == "dimensions"
    assert "must be 64 for this model, got 32" in error["message"]
    assert "not trained with Matryoshka" in error["message"]
    full = client(plain_server).embeddings.create(model="m", input=tiny_texts[:2], dimensions=64)
    assert len(full.data[0].embedding) == 64  # its own width, as before


# ---- prompt_name and usage --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_prompt_name_applies_the_recorded_prompt(nested_server, nested, tiny_texts, name):
    texts = tiny_texts[:3]
    response = client(nested_server).embeddings.create(model="m", input=texts, extra_body={"prompt_name": name})
    expected_ids = _tokenized_with(nested, PROMPTS[name], texts)
    assert response.usage.prompt_tokens == sum(map(len, expected_ids))
    expected = nested.encode_ids(expected_ids)
    assert (rows(response) * expected).sum(1).min() >= 0.9999
    plain = rows(client(nested_server).embeddings.create(model="m", input=texts))
    assert (plain * expected).sum(1).max() < 0.9999  # the prompt changed the vectors
    assert nested.prompt is None  # the embedder's own prompt is left as it was


def _tokenized_with(embedder: Embedder, prompt: str, texts: list[str]) -> list[list[int]]:
    saved = embedder.prompt
    embedder.prompt = prompt
    try:
        return embedder.tokenize(texts)
    finally:
        embedder.prompt = saved


def test_usage_counts_the_tokens_embedded(plain_server, plain, tiny_texts):
    texts = tiny_texts[:5]
    status, body = post(plain_server, {"input": texts})
    tokens = sum(map(len, plain.tokenize(texts)))
    assert status == 200 and body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


# ---- bad values of every new field ------------------------------------------------------------------------------
@pytest.mark.parametrize(("payload", "code", "named"), [
    ({"input": "a dog", "dimensions": 0}, "invalid_dimensions", "'dimensions' is 0"),
    ({"input": "a dog", "dimensions": -16}, "invalid_dimensions", "'dimensions' is -16"),
    ({"input": "a dog", "dimensions": 65}, "invalid_dimensions", "'dimensions' is 65"),
    ({"input": "a dog", "dimensions": 10 ** 30}, "invalid_dimensions", "'dimensions' is 1000000000000000000000"),
    ({"input": "a dog", "dimensions": 24}, "invalid_dimensions", "16, 32, 64 only"),
    ({"input": "a dog", "dimensions": 16.5}, "invalid_dimensions", "a whole number, one of 16, 32, 64"),
    ({"input": "a dog", "dimensions": "16"}, "invalid_dimensions", "a whole number"),
    ({"input": "a dog", "dimensions": True}, "invalid_dimensions", "a whole number"),
    ({"input": [[5, 6], [7, 10 ** 6]]}, "invalid_input", "input[1][1] is token id 1000000"),
    ({"input": [5, 10 ** 6]}, "invalid_input", "input[1] is token id 1000000"),
    ({"input": [5, -1]}, "invalid_input", "input[1] must be a token id, a whole number >= 0, got -1"),
    ({"input": [[5, 2.5]]}, "invalid_input", "input[0][1] must be a token id, a whole number >= 0, got 2.5"),
    ({"input": [[5, 6], []]}, "empty_input", "input[1] is an empty list of token ids"),
    ({"input": [[]]}, "empty_input", "input[0] is an empty list of token ids"),
    ({"input": [5] * 64}, "input_too_long", "input has 65 token ids"),
    ({"input": [[5], [6] * 70]}, "input_too_long", "input[1] has 71 token ids"),
    ({"input": ["a dog", [5, 6]]}, "invalid_input", "input[1] must be a string (token ids are not accepted)"),
    ({"input": [5, "a dog"]}, "invalid_input", "text and token ids are not mixed"),
    ({"input": [[5, 6], "a dog"]}, "invalid_input", "text and token ids are not mixed"),
    ({"input": "a dog", "prompt_name": "passage"}, "invalid_prompt_name", "'prompt_name' is \"passage\""),
    ({"input": "a dog", "prompt_name": 3}, "invalid_prompt_name", "'prompt_name' must be a string"),
    ({"input": [5, 6], "prompt_name": "query"}, "invalid_prompt_name", "token ids are embedded as sent"),
])
def test_bad_values_of_the_new_fields_get_one_line_400s(nested_server, payload, code, named):
    status, body = post(nested_server, payload)
    assert status == 400, body
    error = body["error"]
    assert (error["code"], error["type"]) == (code, "invalid_request_error")
    assert named in error["message"] and "\n" not in error["message"] and len(error["message"]) < 300
    assert "Traceback" not in json.dumps(body)


def test_prompt_name_on_a_model_without_prompts_says_so(plain_server):
    status, body = post(plain_server, {"input": "a dog", "prompt_name": "query"})
    assert status == 400 and "records none (export it with --query-prompt" in body["error"]["message"]


# ---- /metrics ---------------------------------------------------------------------------------------------------
SAMPLE = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*\})? (\S+)')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\.)*)"')


def parse_prometheus(text: str) -> dict[str, dict]:
    """Prometheus text format 0.0.4, parsed strictly (stricter than prometheus_client's parser): every line is a
    HELP, a TYPE or a sample of a family declared before it; values are floats; histograms are cumulative and end
    with +Inf equal to _count. Returns family -> {"type", samples: [(name, labels, value)]}."""
    assert text.endswith("\n")
    families: dict[str, dict] = {}
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert name not in families, f"family declared twice: {line}"
            families[name] = {"type": None, "samples": []}
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert families[name]["type"] is None and kind in ("counter", "gauge", "histogram"), line
            families[name]["type"] = kind
        else:
            match = SAMPLE.fullmatch(line)
            assert match, f"not a sample line: {line!r}"
            name, labels, value = match.group(1), dict(LABEL.findall(match.group(2) or "")), float(match.group(3))
            family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in families else name
            assert families[family]["type"], f"sample before its TYPE: {line}"
            families[family]["samples"].append((name, labels, value))
    for name, family in families.items():
        if family["type"] == "histogram":
            check_histogram(name, family["samples"])
    return families


def check_histogram(name: str, samples: list) -> None:
    series: dict[tuple, list] = {}
    for sample, labels, value in samples:
        key = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        series.setdefault(key, []).append((sample, labels.get("le"), value))
    for parts in series.values():
        buckets = [(float(le), value) for sample, le, value in parts if sample == f"{name}_bucket"]
        assert [b for b, _ in buckets] == sorted(b for b, _ in buckets) and buckets[-1][0] == math.inf
        assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:], strict=False))  # cumulative
        count = [value for sample, _, value in parts if sample == f"{name}_count"]
        assert count == [buckets[-1][1]] and any(sample == f"{name}_sum" for sample, _, _ in parts)


def value(families: dict, family: str, sample: str | None = None, **labels) -> float:
    found = [v for name, ls, v in families[family]["samples"]
             if name == (sample or family) and all(ls.get(k) == str(w) for k, w in labels.items())]
    return sum(found)


def scrape(server, headers: dict | None = None) -> dict:
    status, text = post(server, None, "/metrics", headers)
    assert status == 200, text
    families = parse_prometheus(text)
    # Prometheus' own Python parser reads the same samples.
    from prometheus_client.parser import text_string_to_metric_families

    theirs = {(s.name, tuple(sorted(s.labels.items())), s.value)
              for family in text_string_to_metric_families(text) for s in family.samples}
    ours = {(name, tuple(sorted(labels.items())), v) for family in families.values()
            for name, labels, v in family["samples"]}
    assert theirs == ours
    return families


def test_metrics_count_what_was_served(plain, tiny_texts):
    with start_server(plain, limits=ServeLimits(max_tokens=400)) as server:
        before = scrape(server)
        assert value(before, "embedtune_requests_total") == 0 and value(before, "embedtune_tokens_total") == 0
        tokens = 0
        for i in range(5):
            status, body = post(server, {"input": tiny_texts[i:i + 2]})
            assert status == 200
            tokens += body["usage"]["total_tokens"]
        for bad in ({"input": []}, {"input": "a", "dimensions": 3}, "{"):
            assert post(server, bad)[0] == 400
        assert post(server, None, "/health")[0] == 200
        after = scrape(server)
        calls = server.service.batcher.model_calls
    requests = "embedtune_requests_total"
    assert value(after, requests, route="/v1/embeddings", status=200) == 5
    assert value(after, requests, route="/v1/embeddings", status=400) == 3
    assert value(after, requests, route="/health", status=200) == 1
    assert value(after, requests, route="/metrics", status=200) == 1  # the first scrape (a scrape sees not itself)
    assert value(after, "embedtune_tokens_total") == tokens
    latency = "embedtune_request_duration_seconds"
    assert value(after, latency, f"{latency}_count", route="/v1/embeddings") == 8
    assert value(after, latency, f"{latency}_sum", route="/v1/embeddings") > 0
    assert value(after, "embedtune_batch_size", "embedtune_batch_size_count") == calls == 5
    assert value(after, "embedtune_batch_size", "embedtune_batch_size_sum") == 10  # two texts a request
    assert value(after, "embedtune_queue_depth") == 0 and after["embedtune_queue_depth"]["type"] == "gauge"
    assert value(after, "embedtune_requests_in_progress") == 1  # the scrape itself


def test_metrics_want_the_api_key_when_one_is_set(plain):
    with start_server(plain, api_key="sesame") as server:
        status, body = post(server, None, "/metrics")
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        assert "embedtune_requests_total" in scrape(server, {"Authorization": "Bearer sesame"})


def test_unknown_paths_share_one_label(plain_server):
    for path in ("/a", "/b", "/c?x=1"):
        post(plain_server, None, path)
    families = scrape(plain_server)
    routes = {ls["route"] for _, ls, _ in families["embedtune_requests_total"]["samples"]}
    assert "other" in routes and not routes & {"/a", "/b", "/c"}


# ---- batching by a token budget ---------------------------------------------------------------------------------
def concurrently(server, payloads: list) -> list:
    return run_concurrently(server, payloads, send=post)


@pytest.mark.parametrize("budget", [64, 200])
def test_a_model_call_never_exceeds_the_token_budget(plain, tiny_texts, monkeypatch, budget):
    calls, passes = [], []
    encode_ids, embed_batch = plain.encode_ids, plain.embed_batch
    monkeypatch.setattr(plain, "encode_ids", lambda ids, *a, **kw: calls.append(list(ids)) or encode_ids(ids, *a, **kw))
    monkeypatch.setattr(plain, "embed_batch",
                        lambda batch: passes.append(tuple(batch["input_ids"].shape)) or embed_batch(batch))
    limits = ServeLimits(max_batch_size=64, max_batch_tokens=budget, batch_wait_ms=150)
    payloads = [{"input": [tiny_texts[i % len(tiny_texts)], tiny_texts[(i * 5) % len(tiny_texts)]]}
                for i in range(12)]
    with start_server(plain, limits=limits) as server:
        calls.clear(), passes.clear()  # (the warm-up)
        results = concurrently(server, payloads)
        model_calls = server.service.batcher.model_calls
    assert all(status == 200 for status, _ in results)
    assert all(len(ids) * max(map(len, ids)) <= budget for ids in calls), [len(c) for c in calls]
    assert all(rows_ * width <= budget for rows_, width in passes)
    assert model_calls == len(calls) and model_calls < len(payloads)  # requests were merged, within the budget
    widest = max(len(ids) for call in calls for ids in call)
    assert max(len(call) for call in calls) > 2 and max(len(c) for c in calls) * widest > 32  # not trivially small


def test_no_batching_serves_one_request_per_model_call(plain, tiny_texts, monkeypatch):
    calls = []
    encode_ids = plain.encode_ids
    monkeypatch.setattr(plain, "encode_ids", lambda ids, *a, **kw: calls.append(len(ids)) or encode_ids(ids, *a, **kw))
    limits = ServeLimits(batch_wait_ms=150, dynamic_batching=False)
    with start_server(plain, limits=limits) as server:
        calls.clear()
        results = concurrently(server, [{"input": tiny_texts[i:i + 2]} for i in range(8)])
    assert all(status == 200 for status, _ in results) and calls == [2] * 8


def test_a_budget_below_one_text_is_refused(plain):
    from embedtune.errors import ConfigError
    from embedtune.serve import EmbeddingService

    with pytest.raises(ConfigError, match=r"max_batch_tokens \(32\) must be at least the model's max_length \(64\)"):
        EmbeddingService(plain, ServeLimits(max_batch_tokens=32))


def test_cli_serve_passes_the_batching_flags_and_precision(monkeypatch):
    import embedtune.serve as serve_package
    from embedtune import cli
    from embedtune.models import embedder as embedder_module

    seen = {}
    monkeypatch.setattr(embedder_module.Embedder, "from_config",
                        classmethod(lambda cls, config, **kw: seen.update(kw) or "embedder"))
    monkeypatch.setattr(serve_package, "serve", lambda embedder, **kwargs: seen.update(kwargs))
    assert cli.main(["serve", "--model", "m", "--max-batch-tokens", "999", "--batch-wait-ms", "7", "--no-batching",
                     "--precision", "fp32"]) == 0
    limits = seen["limits"]
    assert (limits.max_batch_tokens, limits.batch_wait_ms, limits.dynamic_batching) == (999, 7.0, False)
    assert seen["precision"] == "fp32"
    assert cli.main(["serve", "--model", "m"]) == 0
    assert seen["limits"].dynamic_batching is True and seen["precision"] == "auto"


# ---- an export that records prompts, encoded and served ---------------------------------------------------------
@pytest.fixture(scope="module")
def prompted_export(tiny_model_dir, tiny_adapter_dir, tmp_path_factory):
    from embedtune import cli

    out = tmp_path_factory.mktemp("exports") / "prompted"
    assert cli.main(["export", "--model", str(tiny_model_dir), "--adapter", str(tiny_adapter_dir), "--max-length",
                     "64", "--out", str(out), "--query-prompt", PROMPTS["query"], "--document-prompt",
                     PROMPTS["document"]]) == 0
    return out


def test_export_records_the_prompts_and_serve_applies_them(prompted_export, tiny_texts):
    from embedtune.models.export_format import EXPORT_INFO_FILE

    info = json.loads((prompted_export / EXPORT_INFO_FILE).read_text(encoding="utf-8"))
    assert info["prompts"] == PROMPTS
    embedder = Embedder(str(prompted_export), precision="fp32")
    assert embedder.prompts == PROMPTS
    with start_server(embedder) as server:
        status, body = post(server, {"input": tiny_texts[:2], "prompt_name": "query"})
        assert status == 200 and body["usage"]["prompt_tokens"] == sum(
            map(len, _tokenized_with(embedder, PROMPTS["query"], tiny_texts[:2])))
        health = post(server, None, "/health")[1]
        assert health["prompt_names"] == ["query", "document"] and health["matryoshka_dims"] == []


def test_export_refuses_a_bad_prompt(tiny_model_dir, tmp_path, capsys):
    from embedtune import cli

    assert cli.main(["export", "--model", str(tiny_model_dir), "--out", str(tmp_path / "x"), "--query-prompt",
                     "{} and {}"]) == 2
    assert "--query-prompt is a prefix put before each text, not a '{}' template: '{} and {}'" in \
        capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_encode_fp32_gives_sentence_transformers_vectors(prompted_export, tiny_texts, tmp_path, capsys):
    from sentence_transformers import SentenceTransformer

    from embedtune import cli

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(tiny_texts) + "\n", encoding="utf-8")
    out = tmp_path / "vectors.npy"
    assert cli.main(["encode", "--model", str(prompted_export), "--input", str(texts), "--output", str(out),
                     "--precision", "fp32"]) == 0
    ours = np.load(out)
    theirs = SentenceTransformer(str(prompted_export), device="cpu").encode(tiny_texts, batch_size=4)
    np.testing.assert_allclose(ours, theirs, atol=1e-6, rtol=0)
    err = capsys.readouterr().err  # off a terminal: plain lines, each with the rate and the time left
    lines = [line for line in err.splitlines() if line.startswith("texts.txt")]
    assert lines and all("\r" not in line for line in lines)
    assert re.search(r"100%.*\[\d\d:\d\d<00:00, .*tok/s\]", lines[-1]), lines
