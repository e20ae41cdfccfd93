"""The served-model engine against a real vLLM server (CPU build) on 127.0.0.1.

Remote == local: greedy kad and kad-spec emit exactly the tokens of the local
engine on the same weights; sampled tokens follow π.  The exactness check asks for
more log-probabilities when it must and stops cleanly when the server's limit is
reached.  Faults come from the real server (stopped, restarted, nothing listening)
and, for answers a real server does not garble, from a proxy in front of it.  All
tests share one server (one xdist group) and bound every request.
"""

from __future__ import annotations

import http.server
import json
import re
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import scipy.stats
import torch
from decoding_helpers import CHARS, make_tokenizer
from fault_proxy import FAULTS, FaultProxy
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedTokenizerBase
from vllm_server import MAX_LOGPROBS, SERVED_NAME, VllmServer, build_models, free_port

import kad
import kad_kernels as kk
from kad import cli
from kad.batch import Batch
from kad.engines import EngineError, RemoteEngine
from kad.engines.remote import _local_stop_ids

pytestmark = pytest.mark.xdist_group("vllm")

PROMPTS = ["hello there", "a", "what is 2 + 2?"]  # ragged
BUDGETS = [10, 14, 8]
FAST_FAILURE = dict(attempts=2, backoff=0.05, timeout=10.0)


@dataclass
class Served:
    server: VllmServer
    directory: Path
    tokenizer: PreTrainedTokenizerBase
    base: torch.nn.Module  # the served weights, loaded locally
    aligned: torch.nn.Module

    def engine(self, url: str | None = None, **kwargs) -> RemoteEngine:
        return RemoteEngine(url or self.server.url, SERVED_NAME, self.tokenizer, **kwargs)

    def remote(self, **kwargs) -> kad.Decoder:
        return kad.Decoder(self.engine(**kwargs), self.aligned, self.tokenizer)

    def local(self) -> kad.Decoder:
        return kad.Decoder(self.base, self.aligned, self.tokenizer)


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Served:
    directory = tmp_path_factory.mktemp("tiny-base")
    _, aligned = build_models(directory)
    server = VllmServer(directory, directory / "vllm.log").start()
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
        base = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
        yield Served(server, directory, tokenizer, base, aligned)
    finally:
        server.stop()


# ----------------------------------------------------------------------------- remote == local

GREEDY = [kk.Dual(0.4), kk.Dual(0.001), kk.Primal(0.9), kk.Dual(mu=0.9, loss="squared")]


@pytest.mark.parametrize("mode, gamma", [("kad", 1), ("kad-spec", 1), ("kad-spec", 3)])
@pytest.mark.parametrize("rule", GREEDY, ids=repr)
def test_greedy_remote_emits_the_local_tokens(served, rule, mode, gamma):
    local = served.local().generate(PROMPTS, mode, rule, gamma=gamma, temperature=0.0, max_new_tokens=BUDGETS)
    remote = served.remote().generate(PROMPTS, mode, rule, gamma=gamma, temperature=0.0, max_new_tokens=BUDGETS)
    assert remote.token_ids == local.token_ids
    stats = remote.stats
    assert stats.partial_positions > 0 and stats.inexact_positions == 0
    assert 0 < stats.requests <= stats.rounds * 2  # one request per round, a second where k had to grow


def test_stop_strings_end_the_remote_rows_where_they_end_the_local_rows(served):
    common = dict(gamma=3, temperature=0.0, max_new_tokens=BUDGETS)
    whole = served.local().generate(PROMPTS, "kad-spec", kk.Dual(0.4), **common)
    strings = [whole.texts[0][3:5] or "a", "e"]
    local = served.local().generate(PROMPTS, "kad-spec", kk.Dual(0.4), stop_strings=strings, **common)
    remote = served.remote().generate(PROMPTS, "kad-spec", kk.Dual(0.4), stop_strings=strings, **common)
    assert remote.token_ids == local.token_ids
    assert sum(map(len, local.token_ids)) < sum(map(len, whole.token_ids))


@pytest.mark.parametrize("mode, gamma", [("nudging", 1), ("nudging-spec", 3)])
def test_greedy_nudging_is_served_on_steps_that_keep_everything_too(served, mode, gamma):
    """Nudging(λ) keeps every token where P ≥ λ (π = p): greedy, the top-k settles those
    steps too (the vocabulary is larger than the server's --max-logprobs)."""
    rule = kk.Nudging(0.5)
    local = served.local().generate(PROMPTS, mode, rule, gamma=gamma, temperature=0.0, max_new_tokens=BUDGETS)
    remote = served.remote().generate(PROMPTS, mode, rule, gamma=gamma, temperature=0.0, max_new_tokens=BUDGETS)
    assert remote.token_ids == local.token_ids and remote.stats.inexact_positions == 0
    assert len(served.tokenizer) > MAX_LOGPROBS


def test_the_logprobs_match_the_local_model(served):
    """fp32 served log-probabilities equal transformers' log-softmax of the same weights."""
    engine = served.engine()
    batch = Batch([served.tokenizer("hello there").input_ids], engine.device)
    remote = engine.advance(batch).log_softmax(-1)
    with torch.no_grad():
        local = served.base(input_ids=batch.tokens).logits[:, -1:].log_softmax(-1)
    top = remote[0, 0].topk(20).indices
    torch.testing.assert_close(remote[0, 0, top], local[0, 0, top], atol=1e-4, rtol=0)


def test_sampled_first_tokens_follow_the_mixture(served):
    rows = 2000
    prompt = served.tokenizer("hello").input_ids
    rule = kk.Dual(0.4)
    out = served.remote().generate([prompt] * rows, "kad", rule, temperature=1.0, max_new_tokens=1, seed=0)
    assert out.stats.inexact_positions == 0
    counts = np.bincount([t[0] for t in out.token_ids], minlength=len(served.tokenizer))
    with torch.no_grad():
        p = served.base(input_ids=torch.tensor([prompt])).logits[:, -1]
        q = served.aligned(input_ids=torch.tensor([prompt])).logits[:, -1]

    def p_value(rule: kk.Rule) -> float:
        expected = kk.mixture(p, q, rule).probs[0].double().numpy() * rows
        big = expected >= 5
        observed = np.append(counts[big], counts[~big].sum())
        wanted = np.append(expected[big], expected[~big].sum())
        return scipy.stats.chisquare(observed, wanted * observed.sum() / wanted.sum()).pvalue

    assert p_value(rule) > 1e-3
    assert p_value(kk.Dual(0.0)) < 1e-6  # far from the base model alone: the test can fail


# ----------------------------------------------------------------------------- exactness


def test_positions_the_first_k_does_not_settle_are_asked_again_with_a_larger_k(served):
    rule = kk.Dual(0.001)  # keeps tokens down to p = 0.001: more than the top 1
    local = served.local().generate(PROMPTS, "kad-spec", rule, gamma=3, temperature=0.0, max_new_tokens=BUDGETS)
    remote = served.remote(logprobs=1).generate(PROMPTS, "kad-spec", rule, gamma=3, temperature=0.0,
                                                max_new_tokens=BUDGETS)  # fmt: skip
    assert remote.token_ids == local.token_ids
    assert remote.stats.requests > remote.stats.rounds and remote.stats.inexact_positions == 0


def test_the_limit_of_the_server_ends_the_generation_cleanly_or_is_counted(served):
    """Perceptron μ = 0.2 keeps every token where max p < 0.2: more than --max-logprobs. Sampled
    (greedy rows of such steps need only p's arg-max)."""
    rule = kk.Dual(mu=0.2, loss="perceptron")
    args = (PROMPTS, "kad-spec", rule)
    kwargs = dict(gamma=3, temperature=1.0, max_new_tokens=BUDGETS, seed=0)
    with pytest.raises(EngineError, match=rf"{served.server.url}: the top-{MAX_LOGPROBS} log-probabilities do not"):
        served.remote().generate(*args, **kwargs)
    out = served.remote(approximate=True).generate(*args, **kwargs)
    assert 0 < out.stats.inexact_positions < out.stats.partial_positions


def test_other_temperatures_are_refused_unless_approximated(served):
    with pytest.raises(ValueError, match="temperature 0.7: the top-k log-probabilities .* determine π only at"):
        served.remote().generate(PROMPTS, "kad", kk.Dual(0.4), temperature=0.7, max_new_tokens=4)
    out = served.remote(approximate=True).generate(PROMPTS, "kad", kk.Dual(0.4), temperature=0.7, max_new_tokens=4)
    assert out.stats.inexact_positions == out.stats.partial_positions > 0
    assert out.stats.requests == out.stats.rounds  # no larger k could settle π: none is asked for


def test_vocabulary_and_model_name_are_checked_at_start(served):
    with pytest.raises(ValueError, match=rf"'{SERVED_NAME}' at {served.server.url} .* different vocabularies"):
        RemoteEngine(served.server.url, SERVED_NAME, make_tokenizer(chars=CHARS[::-1]))
    with pytest.raises(ValueError, match=rf"does not serve a model named 'other'; it serves \['{SERVED_NAME}'\]"):
        RemoteEngine(served.server.url, "other", served.tokenizer)
    assert served.engine().max_length == 511  # --max-model-len 512 holds a prompt and the one token asked


def test_the_served_models_own_eos_stops_rows_as_the_local_models_does(served, tmp_path):
    """Read from the generation config of the model the server names, when its files are here."""
    local = kad.engines.HFEngine(served.base)
    assert local.stop_ids and served.engine().stop_ids == local.stop_ids
    assert served.engine(stop_ids=[5, 7]).stop_ids == {5, 7}


def test_a_served_model_saved_without_a_generation_config_stops_at_its_configs_eos(tmp_path):
    """transformers gives a model saved without generation_config.json the generation config of
    its config.json, and so does the served model's stop-id lookup."""
    config = LlamaConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, intermediate_size=32,
                         num_attention_heads=2, eos_token_id=5, bos_token_id=None, pad_token_id=None)  # fmt: skip
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    (tmp_path / "generation_config.json").unlink(missing_ok=True)
    local = kad.engines.HFEngine(AutoModelForCausalLM.from_pretrained(tmp_path))
    assert local.stop_ids == {5}
    assert _local_stop_ids({"root": str(tmp_path), "id": SERVED_NAME}) == {5}
    assert _local_stop_ids({"root": str(tmp_path / "elsewhere"), "id": SERVED_NAME}) == frozenset()


def test_a_served_model_is_refused_in_any_role_but_the_base_models(served):
    """π reads every token of q*: top-k log-probabilities of the aligned model would give a wrong π
    that the exactness check (about p) could not see."""
    import kad.hf

    message = r"the aligned model .* is a served model, .* only the base model may be served"
    ids = torch.tensor([served.tokenizer(PROMPTS[0]).input_ids])
    with pytest.raises(ValueError, match=message):
        served.aligned.generate(input_ids=ids, custom_generate=kad.hf.generate, aligned_model=served.engine(),
                                rule=kk.Dual(0.4), max_new_tokens=4, do_sample=False)  # fmt: skip
    with pytest.raises(ValueError, match=message):
        kad.hf.KADLogitsProcessor(served.engine(), kk.Dual(0.4))
    with pytest.raises(ValueError, match=message):
        kad.Decoder(served.aligned, served.engine(), served.tokenizer).generate(PROMPTS[:1], "kad", kk.Dual(0.4),
                                                                               max_new_tokens=4)  # fmt: skip


def test_a_row_that_fills_max_model_len_is_served(served):
    """vLLM refuses a prompt + max_tokens past --max-model-len; a speculative round feeds a row
    its drafts too.  Rows of every length up to the context, a short row beside them."""
    prompt = served.tokenizer("hello there " * 100).input_ids[:500]
    prompts = [prompt[:n] for n in (500, 507, 510)] + [prompt[:3]]
    for mode, gamma in [("kad", 1), ("kad-spec", 4), ("kad-spec", 8)]:
        with pytest.warns(kad.ContextLengthWarning, match="context length 511"):
            remote = served.remote().generate(prompts, mode, kk.Dual(0.4), gamma=gamma, temperature=0.0,
                                              max_new_tokens=12)  # fmt: skip
        assert [len(p) + len(t) for p, t in zip(prompts, remote.token_ids)][:3] == [511, 511, 511]


def test_greedy_base_mode_is_served_and_sampling_it_is_refused(served):
    """π = p needs only p's arg-max when greedy; sampled, it needs the whole row."""
    local = served.local().generate(PROMPTS, "base", temperature=0.0, max_new_tokens=BUDGETS)
    remote = served.remote(logprobs=1).generate(PROMPTS, "base", temperature=0.0, max_new_tokens=BUDGETS)
    assert remote.token_ids == local.token_ids and remote.stats.inexact_positions == 0
    with pytest.raises(ValueError, match="mode 'base' samples the base model's whole distribution"):
        served.remote().generate(PROMPTS, "base", temperature=1.0, max_new_tokens=4)


def test_the_server_limit_is_learnt_once(served):
    """Asked above --max-logprobs, the server refuses and tells its limit; the engine asks within it
    after, in later generations too (each kad eval batch is one)."""
    with FaultProxy(served.server.url) as proxy:
        engine = served.engine(proxy.url, logprobs=MAX_LOGPROBS + 10)
        decoder = kad.Decoder(engine, served.aligned, served.tokenizer)
        out = decoder.generate(PROMPTS, "kad", kk.Dual(0.4), temperature=0.0, max_new_tokens=BUDGETS)
        assert out.stats.requests == out.stats.rounds  # the refused request is not counted; no other was refused
        assert proxy.completions == out.stats.requests + 1  # the one refused
        proxy.completions = 0
        again = decoder.generate(PROMPTS, "kad", kk.Dual(0.4), temperature=0.0, max_new_tokens=BUDGETS)
        assert proxy.completions == again.stats.requests  # none refused
        with pytest.raises(EngineError, match=rf"the top-{MAX_LOGPROBS} log-probabilities do not determine"):
            decoder.generate(PROMPTS, "kad-spec", kk.Dual(mu=0.2, loss="perceptron"), gamma=3, temperature=1.0,
                             max_new_tokens=BUDGETS, seed=0)  # fmt: skip
    with FaultProxy(served.server.url) as proxy:  # one prompt a request: the first refusal teaches the others
        engine = served.engine(proxy.url, logprobs=MAX_LOGPROBS + 10, max_prompts=1)
        out = kad.Decoder(engine, served.aligned, served.tokenizer).generate(
            PROMPTS, "kad", kk.Dual(0.4), temperature=0.0, max_new_tokens=BUDGETS)  # fmt: skip
        assert out.stats.requests > out.stats.rounds and proxy.completions == out.stats.requests + 1


# ----------------------------------------------------------------------------- faults


def test_a_base_url_without_the_api_root_says_so(served):
    root = served.server.url.removesuffix("/v1")
    with pytest.raises(EngineError, match=rf"^{root}/models: HTTP 404: .*\(the base URL names the API root, e.g. "):
        RemoteEngine(root, SERVED_NAME, served.tokenizer, **FAST_FAILURE)


def test_nothing_listening_is_one_line_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(EngineError, match=rf"^{url}/models: ConnectError.* \(after 2 attempts\)$"):
        RemoteEngine(url, SERVED_NAME, make_tokenizer(), **FAST_FAILURE)


PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


@pytest.mark.parametrize("errno, retried, proxy", [(socket.EAI_NONAME, False, False), (socket.EAI_AGAIN, True, False),
                                                   (socket.EAI_NONAME, False, True)])  # fmt: skip
def test_an_unknown_host_fails_at_once_and_a_resolver_that_did_not_answer_is_retried(monkeypatch, errno, retried, proxy):
    """No such host (a typo) gets the same answer from DNS on every retry (they took about 8 s);
    a resolver that did not answer may answer the next time.  Through a proxy of the environment,
    the name that failed may be the proxy's, and the message names it too.  The lookup is made to
    fail here, as CI resolves no name beyond localhost."""
    real_lookup, lookups = socket.getaddrinfo, []

    def lookup(host, *args, **kwargs):
        if not host.endswith(".invalid"):
            return real_lookup(host, *args, **kwargs)
        lookups.append(host)
        raise socket.gaierror(errno, "Name or service not known" if errno == socket.EAI_NONAME else "try again")

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    for variable in PROXY_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    if proxy:
        monkeypatch.setenv("HTTP_PROXY", "http://kad-no-such-proxy.invalid:3128")
    url = "http://kad-no-such-host.invalid:8000/v1"
    host = "'kad-no-such-host.invalid'" + (" or the proxy 'http://kad-no-such-proxy.invalid:3128' from the "
                                           "environment" if proxy else "")  # fmt: skip
    message = (rf"^{url}/models: ConnectError: .*try again \(after 2 attempts\)$" if retried else
               rf"^{url}/models: no such host {re.escape(host)} \(.*Name or service not known\); check the host name$")
    with pytest.raises(EngineError, match=message):
        RemoteEngine(url, SERVED_NAME, make_tokenizer(), **FAST_FAILURE)
    assert lookups == ["kad-no-such-proxy.invalid" if proxy else "kad-no-such-host.invalid"] * (2 if retried else 1)


class _Refuse(http.server.BaseHTTPRequestHandler):
    """A server that answers every request 401, as vLLM --api-key does without the key (or a wrong one)."""

    def do_GET(self):
        body = b'{"error": {"message": "wrong key"}}'
        self.send_response(401)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def refusing_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_a_failing_server_is_found_before_the_aligned_weights_load(tmp_path, monkeypatch, refusing_url):
    """``Decoder.from_pretrained`` asks the server with the aligned tokenizer alone: a large
    aligned model takes minutes to load, a refusal (or a dead server) should not wait for it."""
    directory = tmp_path / "aligned"
    tokenizer = make_tokenizer()
    tokenizer.save_pretrained(directory)
    LlamaConfig(vocab_size=len(tokenizer)).save_pretrained(directory)  # the weights are never read

    def load(name_or_path, *args):
        raise AssertionError(f"{name_or_path} loaded before the server answered")

    monkeypatch.setattr(kad.models, "load", load)
    monkeypatch.setattr(kad.models, "load_weights", load)
    with pytest.raises(EngineError, match=rf"^{refusing_url}/models: HTTP 401: wrong key"):
        kad.Decoder.from_pretrained(aligned=str(directory), base_url=refusing_url, device="cpu")


@pytest.mark.parametrize("key, hint", [(None, "the server wants an API key"), ("sk-wrong", "the server refuses this API key")])
def test_a_401_hint_tells_a_missing_key_from_a_refused_one(refusing_url, key, hint):
    with pytest.raises(EngineError, match=rf"^{refusing_url}/models: HTTP 401: wrong key \({hint}: --api-key, api_key=\)$"):
        RemoteEngine(refusing_url, SERVED_NAME, make_tokenizer(), api_key=key)


def test_https_to_an_http_server_fails_at_once_naming_tls(refusing_url):
    """A TLS handshake that fails will fail again: no retries (they took about 8 s)."""
    url = refusing_url.replace("http://", "https://")
    start = time.perf_counter()
    with pytest.raises(EngineError, match=rf"^{url}/models: TLS failed \(.*\); a server without TLS is reached by http://$"):
        RemoteEngine(url, SERVED_NAME, make_tokenizer())
    assert time.perf_counter() - start < 1.0


def test_a_connection_closed_during_the_handshake_is_retried():
    """A port forward or load balancer whose server is still starting accepts and closes: a
    retry may pass, so it is a fault like any other (SSLEOFError), not a TLS refusal."""
    listener = socket.create_server(("127.0.0.1", 0))

    def close_each():
        while True:
            try:
                listener.accept()[0].close()
            except OSError:  # the listener closed: the test is over
                return

    threading.Thread(target=close_each, daemon=True).start()
    url = f"https://127.0.0.1:{listener.getsockname()[1]}/v1"
    try:
        with pytest.raises(EngineError, match=rf"^{url}/models: ConnectError.* \(after 2 attempts\)$"):
            RemoteEngine(url, SERVED_NAME, make_tokenizer(), **FAST_FAILURE)
    finally:
        listener.close()


@pytest.mark.parametrize(
    "url, message",
    [("127.0.0.1:8000/v1", "must start with http:// or https:// and name a host"),
     ("ftp://127.0.0.1/v1", "must start with http:// or https:// and name a host"),
     ("http:///v1", "must start with http:// or https:// and name a host"),
     ("http://[::1/v1", "is not a URL"),
     ("http://127.0.0.1:70000/v1", "has port 70000, outside 1..65535"),
     ("http://127.0.0.1:8000/v1?x=1", "has a query or fragment: give the API root alone"),
     ("http://127.0.0.1:8000/v1?", "has a query or fragment: give the API root alone")],
)  # fmt: skip
def test_a_malformed_url_is_refused_before_any_request(url, message):
    start = time.perf_counter()
    with pytest.raises(ValueError, match=rf"^base URL {re.escape(repr(url))} .*{re.escape(message)}"):
        RemoteEngine(url, SERVED_NAME, make_tokenizer())
    assert time.perf_counter() - start < 1.0  # no retries


@pytest.mark.parametrize(
    "argument, message",
    [(dict(timeout=None), "timeout must be a finite number of seconds, got None"),
     (dict(timeout=0), "timeout must be > 0 seconds, got 0"),
     (dict(timeout=float("inf")), "timeout must be a finite number of seconds, got inf"),
     (dict(backoff=-1), "backoff must be >= 0 seconds, got -1"),
     (dict(max_prompts=0), "max_prompts must be >= 1, got 0"),
     (dict(attempts=2.5), "attempts must be an int, got 2.5"),
     (dict(logprobs=0), "logprobs must be >= 1, got 0"),
     (dict(logprobs=20, max_logprobs=5), "max_logprobs must be >= 20, got 5"),
     (dict(api_key="sk-SECRET\n"), "api_key (its 10 characters not shown) must be printable ASCII without spaces"),
     (dict(api_key="sk SECRET"), "api_key (its 9 characters not shown)"),
     (dict(api_key=b"sk-SECRET"), "api_key must be a str, got bytes")],

)  # fmt: skip
def test_bad_engine_arguments_are_named_before_any_request(argument, message):
    """A value that would fail later (inside a retry loop, after the first rounds, or by
    echoing a key httpx cannot send) is refused when the engine is made; a key is never shown."""
    start = time.perf_counter()
    with pytest.raises(ValueError, match=f"^{re.escape(message)}") as refusal:
        RemoteEngine("http://127.0.0.1:9/v1", SERVED_NAME, make_tokenizer(), **argument)
    assert "SECRET" not in str(refusal.value)
    assert time.perf_counter() - start < 1.0  # no request, no retries


@pytest.mark.parametrize(
    "argument, error, message",
    [(dict(stop_ids="57"), TypeError, "stop_ids must be a set of token ids, got '57'"),
     (dict(stop_ids=[1.9]), TypeError, "stop_ids must be token ids (ints), got [1.9]"),
     (dict(stop_ids=[-3]), ValueError, f"stop_ids must be in [0, {len(make_tokenizer())}), got [-3]"),
     (dict(approximate="no"), TypeError, "approximate must be True or False, got 'no'"),
     (dict(tokenizer=None), TypeError, "tokenizer must be a transformers tokenizer (PreTrainedTokenizerBase), got None")],
)  # fmt: skip
def test_arguments_of_the_wrong_kind_are_named_before_any_request(argument, error, message):
    """A string of stop ids would be split into characters, and "no" would switch approximation on."""
    arguments = dict(tokenizer=make_tokenizer()) | argument
    tokenizer = arguments.pop("tokenizer")
    with pytest.raises(error, match=f"^{re.escape(message)}"):
        RemoteEngine("http://127.0.0.1:9/v1", SERVED_NAME, tokenizer, **arguments)


def test_a_server_without_tokenize_at_its_root_is_told_apart_from_a_wrong_base_url():
    """A gateway that forwards only /v1/*: the base URL is right (its model list answers), the
    vocabulary check's /tokenize is what is missing."""
    tokenizer = make_tokenizer()

    def gateway(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            body = {"data": [{"id": SERVED_NAME, "max_model_len": 512}]}
            return httpx.Response(200, stream=httpx.ByteStream(json.dumps(body).encode()))
        return httpx.Response(404, stream=httpx.ByteStream(b'{"detail": "Not Found"}'))

    with pytest.raises(EngineError, match=r"^http://127.0.0.1:9/tokenize: HTTP 404: .* no /tokenize and /detokenize") as refusal:
        RemoteEngine("http://127.0.0.1:9/v1", SERVED_NAME, tokenizer, transport=httpx.MockTransport(gateway))
    assert "names the API root" not in str(refusal.value)


def test_a_closed_engine_refuses_to_run(served):
    engine = served.engine()
    engine.close()
    with pytest.raises(EngineError, match=rf"^{re.escape(served.server.url)}/completions: the engine is closed"):
        kad.Decoder(engine, served.aligned, served.tokenizer).generate(PROMPTS, "kad", kk.Dual(0.4), temperature=0.0,
                                                                       max_new_tokens=2)  # fmt: skip


def test_a_request_the_client_cannot_send_fails_at_once():
    """httpx's LocalProtocolError (a header h11 refuses) is this side's fault: no retry sends it."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.LocalProtocolError("Illegal header value")

    start = time.perf_counter()
    with pytest.raises(EngineError, match=r"^http://127.0.0.1:9/v1/models: cannot send the request: Illegal header"):
        RemoteEngine("http://127.0.0.1:9/v1", SERVED_NAME, make_tokenizer(), transport=httpx.MockTransport(refuse))
    assert time.perf_counter() - start < 0.4  # the first retry would wait backoff=0.5 s


@pytest.mark.parametrize(
    "status, headers, body, message",
    [(301, {"Location": "https://127.0.0.1:9/v1/models"}, b"",
      "HTTP 301, a redirect to https://127.0.0.1:9/v1/models: give the base URL it names"),
     (404, {}, b"<html>\n<body>\n<h1>Not Found</h1>\n</body>\n</html>\n",
      "HTTP 404: <html> <body> <h1>Not Found</h1> </body> </html> (the base URL names the API root"),
     (200, {}, b'{"error": {"message": "the model\\nis loading"}}', "an error answer: the model is loading")],
    ids=["redirect", "html-404", "error-as-success"],
)  # fmt: skip
def test_answers_that_are_no_model_list_are_named_in_one_line(status, headers, body, message):
    """A redirect is not retried (no retry gets another answer); a body's line breaks and an
    error sent with 200 reach the message as one line."""
    calls = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(status, headers=headers, stream=httpx.ByteStream(body))

    with pytest.raises(EngineError, match=rf"^http://127.0.0.1:9/v1/models: {re.escape(message)}") as failure:
        RemoteEngine("http://127.0.0.1:9/v1", SERVED_NAME, make_tokenizer(), attempts=2, backoff=0.0,
                     transport=httpx.MockTransport(answer))  # fmt: skip
    assert "\n" not in str(failure.value) and calls == ["/v1/models"]


def test_a_malformed_url_with_credentials_is_named_without_them():
    with pytest.raises(ValueError, match=r"^base URL 'http://…@127.0.0.1:80a/v1' is not a URL") as refusal:
        RemoteEngine("http://kad:SECRET@127.0.0.1:80a/v1", SERVED_NAME, make_tokenizer())
    assert "SECRET" not in str(refusal.value)


def test_credentials_in_the_url_are_sent_as_basic_auth_and_never_shown():
    """A URL's user:password would be shown in every message and recorded in eval results
    (served_at): the engine sends them as HTTP basic auth and names the URL without them."""
    sent = []

    def unavailable(request: httpx.Request) -> httpx.Response:
        sent.append((str(request.url), request.headers.get("Authorization")))
        return httpx.Response(503, stream=httpx.ByteStream(b""))  # a body to stream, as a server sends

    with pytest.raises(EngineError, match=r"^http://127.0.0.1:9/v1/models: HTTP 503 \(after 1 attempts\)$"):
        RemoteEngine("http://kad:SECRET@127.0.0.1:9/v1", SERVED_NAME, make_tokenizer(), attempts=1,
                     transport=httpx.MockTransport(unavailable))  # fmt: skip
    assert sent == [("http://127.0.0.1:9/v1/models", httpx.BasicAuth("kad", "SECRET")._auth_header)]
    with pytest.raises(ValueError, match=r"^base URL 'http://127.0.0.1:9/v1' has credentials and api_key is given too"):
        RemoteEngine("http://kad:SECRET@127.0.0.1:9/v1", SERVED_NAME, make_tokenizer(), api_key="sk-1")


@pytest.mark.parametrize("fault", [f for f in FAULTS if f != "forward"])
def test_a_garbled_answer_is_retried_then_refused_keeping_what_was_generated(served, fault):
    expected = served.local().generate(PROMPTS, "kad", kk.Dual(0.4), temperature=0.0, max_new_tokens=6).token_ids
    # A trickled answer of a few kB takes minutes; the whole answer must come within the timeout.
    timeout = dict(timeout=5.0) if fault == "trickle" else {}
    with FaultProxy(served.server.url) as proxy:
        decoder = kad.Decoder(served.engine(proxy.url, **FAST_FAILURE | timeout), served.aligned, served.tokenizer)
        proxy.faults.extend([fault])  # once: the retry gets a real answer
        out = decoder.generate(PROMPTS, "kad", kk.Dual(0.4), temperature=0.0, max_new_tokens=6)
        assert out.token_ids == expected
        proxy.faults.extend(["forward", "forward", fault, fault])  # the third step fails twice
        with pytest.raises(EngineError, match=rf"^{proxy.url}/completions: .*\(after 2 attempts\)$") as failure:
            decoder.generate(PROMPTS, "kad", kk.Dual(0.4), temperature=0.0, max_new_tokens=6)
    partial = failure.value.partial
    assert partial.token_ids == [tokens[:2] for tokens in expected]  # the two steps before the fault
    assert partial.texts == served.tokenizer.batch_decode(partial.token_ids, skip_special_tokens=True)


def test_a_server_restarted_in_the_middle_of_a_generation_is_waited_for(served):
    expected = served.local().generate(PROMPTS, "kad-spec", kk.Dual(0.4), gamma=3, temperature=0.0,
                                       max_new_tokens=BUDGETS).token_ids  # fmt: skip
    restarted = threading.Event()

    def restart() -> None:
        served.server.stop()
        threading.Thread(target=lambda: (served.server.start(), restarted.set()), daemon=True).start()

    with FaultProxy(served.server.url) as proxy:
        engine = served.engine(proxy.url, attempts=12, backoff=1.0, timeout=30.0)  # waits up to ~35 min in all
        proxy.faults.extend(["forward", restart])
        out = kad.Decoder(engine, served.aligned, served.tokenizer).generate(
            PROMPTS, "kad-spec", kk.Dual(0.4), gamma=3, temperature=0.0, max_new_tokens=BUDGETS
        )
    assert restarted.is_set() and out.token_ids == expected


def test_eval_stopped_by_a_dead_server_resumes_where_it_stopped(served, tmp_path, capsys):
    served.aligned.save_pretrained(tmp_path / "aligned")
    served.tokenizer.save_pretrained(tmp_path / "aligned")
    path = tmp_path / "run.json"
    args = ["eval", "--task", "svamp", "--limit", "4", "--batch-size", "2", "--mode", "kad-spec", "--rule", "dual",
            "--lam", "0.4", "--gamma", "3", "--max-new-tokens", "6", "--temperature", "0", "--system", "",
            "--device", "cpu", "--aligned", str(tmp_path / "aligned"), "--output", str(path)]  # fmt: skip
    with FaultProxy(served.server.url) as proxy:
        proxy.before_each = lambda: served.server.stop() if path.exists() else None  # dies after the first batch
        status = cli.main([*args, "--base-url", proxy.url])
        error = capsys.readouterr().err
        assert status == 1 and f"kad: error: {proxy.url}/completions: HTTP 502" in error and "--resume" in error
        assert "Traceback" not in error
        saved = json.loads(path.read_text())
        assert len(saved["items"]) == 2
        served.server.start()
    # The same model served at another URL (a cluster job on a new node) continues the run.
    assert cli.main([*args, "--base-url", served.server.url, "--resume"]) == 0
    resumed = json.loads(path.read_text())
    assert len(resumed["items"]) == 4 and resumed["items"][:2] == saved["items"]
    assert resumed["config"]["base"] == f"{SERVED_NAME} (served)"
    assert [batch["served_at"] for batch in resumed["batches"]] == [proxy.url, served.server.url]
    # The server's counters are the batches' (one request serves both rows), not the items'.
    assert all(batch["requests"] > 0 and batch["partial_positions"] > 0 for batch in resumed["batches"])
    assert all(item["stats"]["requests"] == 0 for item in resumed["items"])


@pytest.mark.parametrize(
    "options, message",
    [(["--mode", "kad", "--temperature", "0.7"], "temperature 0.7: the top-k log-probabilities of http://127.0.0.1:9/v1"),
     (["--mode", "base", "--temperature", "1"], "mode 'base' samples the base model's whole distribution"),
     (["--mode", "kad", "--rule", "max_q_minus"], "Threshold needs the base model's whole distribution")],
)  # fmt: skip
def test_cli_refuses_what_a_served_base_cannot_score_before_any_model_loads(tmp_path, capsys, options, message):
    """Found when the generation starts, it came after the aligned weights had loaded."""
    args = ["generate", "--base-url", "http://127.0.0.1:9/v1", "--aligned", str(tmp_path / "absent"), "--prompt", "hi"]
    for more, expected in ((options, message), (["--mode", "aligned", "--temperature", "0.7"], "absent': no such")):
        with pytest.raises(SystemExit) as exit_info:  # mode aligned runs no served model: its own error
            cli.main([*args, *more])
        assert exit_info.value.code == 2 and expected in capsys.readouterr().err


def test_cli_demo_with_a_served_base_is_refused_before_any_model_loads(capsys):
    """The demo's first run samples the base model at T = 1, which top-k log-probabilities cannot."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--base-url", "http://127.0.0.1:9/v1"])
    assert exit_info.value.code == 2 and "mode 'base' samples the base model's whole distribution" in capsys.readouterr().err


def test_cli_generate_with_a_served_base(served, tmp_path, capsys):
    served.aligned.save_pretrained(tmp_path / "aligned")
    served.tokenizer.save_pretrained(tmp_path / "aligned")
    args = ["generate", "--base-url", served.server.url, "--aligned", str(tmp_path / "aligned"), "--device", "cpu",
            "--mode", "kad-spec", "--gamma", "3", "--temperature", "0", "--max-new-tokens", "8", "--no-chat",
            "--prompt", "hello there"]  # fmt: skip
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "requests per token" in printed and "scored from top-k log-probabilities" in printed
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", "--base", "x", "--base-url", served.server.url, "--prompt", "hi"])
    assert exit_info.value.code == 2
