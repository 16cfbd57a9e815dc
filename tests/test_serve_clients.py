"""The clients people already point at ``/v1`` work unchanged against a real ``univl-fast
serve`` process (torch blocked, API key on): the ``openai`` SDK (embeddings in its default
base64 encoding and as floats, ``user`` and ``dimensions``, the model list, its error classes
with our message) and LangChain's ``OpenAIEmbeddings`` (``check_embedding_ctx_length=False``).
Vectors equal the engine's own."""

from __future__ import annotations

import numpy as np
import pytest

import univl_fast
from tests.engine_helpers import PRECISION
from tests.serve_helpers import cli_server

openai = pytest.importorskip("openai", reason="pip install openai (a [dev] test dependency)")

pytest_plugins = ["tests.engine_fixtures"]

KEY = "test-key-0123456789"
TEXTS = ["a red lighthouse on a cliff", "the river delta in spring", "x"]


@pytest.fixture(scope="module")
def plain(tiny_engine, flat_index):
    eng = univl_fast.load(tiny_engine, index=flat_index, precision=PRECISION, batching=False)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def server(tiny_engine, flat_index, tmp_path_factory):
    key_file = tmp_path_factory.mktemp("key") / "api-key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    args = ["--engine", str(tiny_engine), "--index", str(flat_index)]
    args += ["--api-key-file", str(key_file), "--precision", PRECISION]
    with cli_server(args) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def model(client):
    (m,) = client.models.list().data
    return m.id


def test_models_list_and_retrieve(client, model, plain):
    assert model == plain.encoder.manifest.get("model_name") or model
    got = client.models.retrieve(model)
    assert got.id == model and got.object == "model" and got.owned_by == "univl-fast"
    with pytest.raises(openai.NotFoundError) as exc:
        client.models.retrieve("text-embedding-3-small")
    assert "not served here" in exc.value.body["message"]


def test_openai_sdk_embeddings_equal_the_engine(client, model, plain):
    ref = plain.encode_text_docs(TEXTS)
    # the SDK asks for base64 by default and decodes it itself
    res = client.embeddings.create(model=model, input=TEXTS, user="user-42")
    assert res.model == model and [d.index for d in res.data] == [0, 1, 2]
    np.testing.assert_allclose(np.array([d.embedding for d in res.data]), ref, atol=1e-6)
    assert res.usage.prompt_tokens == res.usage.total_tokens > len(TEXTS)
    res = client.embeddings.create(
        model=model, input=TEXTS[0], encoding_format="float", dimensions=plain.dim
    )
    np.testing.assert_allclose(res.data[0].embedding, ref[0], atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "error", "needle"),
    [
        ({"dimensions": 8}, "BadRequestError", "Matryoshka"),
        ({"input": []}, "BadRequestError", "must not be empty"),
        ({"input": [[1, 2, 3]]}, "BadRequestError", "check_embedding_ctx_length=False"),
        ({"input": [17, 3]}, "BadRequestError", "token ids"),
        ({"model": "text-embedding-ada-002"}, "NotFoundError", "not served here"),
    ],
)
def test_openai_sdk_errors_are_readable(client, model, kwargs, error, needle):
    args = {"model": model, "input": TEXTS, **kwargs}
    with pytest.raises(getattr(openai, error)) as exc:
        client.embeddings.create(**args)
    # the SDK reads OpenAI's error shape: body is our "error" object, code and type from it
    assert needle in exc.value.body["message"], exc.value.body
    assert exc.value.type == exc.value.body["type"] and exc.value.code == exc.value.body["code"]


def test_openai_sdk_wrong_key(server, model):
    bad = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError) as exc:
        bad.embeddings.create(model=model, input="x")
    assert "API key" in exc.value.body["message"] and exc.value.code == "invalid_api_key"


def test_langchain_openai_embeddings(server, model, plain):
    lc = pytest.importorskip("langchain_openai", reason="pip install langchain-openai")
    emb = lc.OpenAIEmbeddings(
        model=model,
        base_url=f"{server.url}/v1",
        api_key=KEY,
        check_embedding_ctx_length=False,  # send text, not tiktoken ids (README "Service")
        max_retries=0,
    )
    got = np.array(emb.embed_documents(TEXTS), dtype=np.float32)
    np.testing.assert_allclose(got, plain.encode_text_docs(TEXTS), atol=1e-6)
    q = np.array(emb.embed_query(TEXTS[1]), dtype=np.float32)
    np.testing.assert_allclose(q, plain.encode_text_docs([TEXTS[1]])[0], atol=1e-6)
