"""The examples of README.md and of the docstrings run, unmodified, on small inputs: the Python blocks here,
the C and C++ blocks compiled against the installed library. (The bash blocks are the CI scripts' own
commands; the cmake block is ci/embed_check.sh's find_package.)"""

import os
import re
import shutil
import subprocess
import textwrap

import pytest
import torch

import bandpo
from conftest import require_package

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_blocks(language: str) -> list[str]:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    return re.findall(r"^```" + language + r"\n(.*?)^```", text, flags=re.S | re.M)


def docstring_example(doc: str) -> str:
    """The first indented block of a docstring (its usage example)."""
    match = re.search(r"\n\n((?:    .*\n|\n)+)", doc)
    assert match, "no indented example in the docstring"
    return textwrap.dedent(match.group(1))


def batch() -> dict:
    """The names the examples use: a [4, 6] batch of log-probabilities, advantages per row, a mask."""
    g = torch.Generator().manual_seed(0)
    old_logp = torch.log_softmax(torch.randn(4, 6, 9, generator=g), -1)[..., 0]
    logp = (old_logp + 0.3 * torch.randn(4, 6, generator=g)).clamp(max=0).requires_grad_()
    return {
        "logp": logp,
        "old_logp": old_logp,
        "advantages": torch.randn(4, generator=g),
        "mask": torch.rand(4, 6, generator=g) > 0.2,
    }


def test_readme_fences_open_and_close():
    # a closing fence with text after it does not close the block (CommonMark): the rest of the page would
    # render as code while the regex above still finds the blocks
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        fences = [(n, line.rstrip("\n")) for n, line in enumerate(f, 1) if line.startswith("```")]
    for k, (n, line) in enumerate(fences):
        assert line == "```" if k % 2 else re.fullmatch(r"```[a-z]+", line), f"README.md:{n}: {line!r}"
    assert len(fences) % 2 == 0


def test_readme_has_the_blocks_this_file_runs():
    assert len(readme_blocks("python")) == 4 and len(readme_blocks("c")) == 1 and len(readme_blocks("cpp")) == 1


def test_readme_use_block_runs():
    # as written, in an empty scope: the block imports and makes everything it uses
    (use,) = [b for b in readme_blocks("python") if "bandpo.BandConfig(" in b]
    scope = {}
    exec(compile(use, "README.md (Use)", "exec"), scope)
    assert scope["logp"].grad is not None and scope["loss"].dim() == 0 and scope["lower"].shape == (4, 6)


def test_readme_f_divergence_block_runs():
    (block,) = [b for b in readme_blocks("python") if "f_divergence_bounds(" in b]
    scope = {}
    exec(compile(block, "README.md (Any f-divergence)", "exec"), scope)
    assert scope["logp"].grad is not None and scope["loss"].dim() == 0 and scope["upper"].shape == (4, 6)


def test_readme_lm_head_block_runs():
    (block,) = [b for b in readme_blocks("python") if "linear_logprob_entropy(" in b and "bandpo.jax" not in b]
    scope = {}
    exec(compile(block, "README.md (From hidden states)", "exec"), scope)
    assert scope["logp"].shape == (24,) and scope["out"].loss.dim() == 0 and "entropy" in scope["out"].metrics


def test_readme_jax_block_runs():
    require_package("jax")
    (block,) = [b for b in readme_blocks("python") if "bandpo.jax" in b]
    scope = {}
    exec(compile(block, "README.md (In JAX)", "exec"), scope)
    assert scope["grad"].shape == (4, 6) and bool((scope["grad"] != 0).any())
    assert scope["logp_h"].shape == scope["entropy"].shape == (24,) and bool((scope["logp_h"] < 0).all())


def test_package_docstring_example_runs():
    scope = batch()
    exec(compile(docstring_example(bandpo.__doc__), "bandpo/__init__.py", "exec"), scope)
    assert scope["logp"].grad is not None and scope["upper"].shape == (4, 6)


@pytest.mark.parametrize("where", ["README.md", "bandpo/integrations/trl.py"])
def test_trl_examples_run(where, tmp_path, monkeypatch):
    pytest.importorskip("trl")
    import test_integration_trl as probe  # noqa: E402  (tiny model, tokenizer, reward and dataset)
    from bandpo.integrations import trl as bandpo_trl

    if where == "README.md":
        (code,) = [b for b in readme_blocks("python") if "BandGRPOTrainer" in b]
    else:
        code = docstring_example(bandpo_trl.__doc__)
    # No hub and no GPU here: the examples' model gets its tokenizer from the test, their config use_cpu where
    # there is no CUDA (GRPOConfig's bf16 default refuses a CPU otherwise) and saves nothing, and train() makes
    # one step.
    real, real_config = bandpo_trl.BandGRPOTrainer, bandpo_trl.BandGRPOConfig

    def config(**kwargs):
        return real_config(**{"use_cpu": not torch.cuda.is_available(), "save_strategy": "no", **kwargs})

    def trainer(**kwargs):
        args = kwargs["args"]
        args.max_steps, args.report_to, args.max_completion_length = 1, [], 8
        return real(processing_class=probe.tiny_tokenizer(), **kwargs)

    monkeypatch.setattr(bandpo_trl, "BandGRPOTrainer", trainer)
    monkeypatch.setattr(bandpo_trl, "BandGRPOConfig", config)
    monkeypatch.chdir(tmp_path)
    scope = {"model": probe.tiny_model(), "reward_fn": probe.count_a_reward, "dataset": probe.prompts()}
    exec(compile(code, where, "exec"), scope)
    assert isinstance(scope["trainer"], real)


C_MAIN = """
#include <stdio.h>
#include <stdint.h>
int main(void) {
  enum { B = 2, T = 3 };
  float logp[B * T] = {-1.0f, -0.5f, -2.0f, -0.1f, -3.0f, -0.7f};
  float old_logp[B * T] = {-1.1f, -0.4f, -2.5f, -0.2f, -2.0f, -0.7f};
  float adv[B] = {1.0f, -0.5f};
  uint8_t mask[B * T] = {1, 1, 1, 1, 1, 0};
  float grad_logp[B * T];
%s
  printf("%%.6f\\n", %s);
  return 0;
}
"""


@pytest.mark.parametrize("language", ["c", "cpp"])
def test_readme_c_and_cpp_blocks_compile_and_run(language, tmp_path):
    prefix = bandpo.cmake_prefix_path()
    include, lib = os.path.join(prefix, "include"), os.path.join(prefix, "lib")
    if not os.path.exists(os.path.join(lib, "libbandpo.so")):
        pytest.skip("needs the installed package's headers and library (the wheel)")
    compiler = shutil.which("cc" if language == "c" else "c++")
    if compiler is None:
        pytest.skip(f"no {language} compiler")
    (block,) = readme_blocks(language)
    includes = "".join(line + "\n" for line in block.splitlines() if line.startswith("#include"))
    body = "\n".join(line for line in block.splitlines() if not line.startswith("#include"))
    source = tmp_path / ("main.c" if language == "c" else "main.cpp")
    source.write_text(includes + C_MAIN % (body, "loss" if language == "c" else "r.loss"))
    exe = tmp_path / "main"
    subprocess.run(
        [compiler, str(source), "-I", include, "-L", lib, "-lbandpo", f"-Wl,-rpath,{lib}", "-o", str(exe)]
        + (["-std=c++17"] if language == "cpp" else []),
        check=True,
        capture_output=True,
        text=True,
    )
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    assert float(out) == pytest.approx(
        float(
            torch.ops.bandpo.band_loss(
                torch.tensor([[-1.0, -0.5, -2.0], [-0.1, -3.0, -0.7]]),
                torch.tensor([[-1.1, -0.4, -2.5], [-0.2, -2.0, -0.7]]),
                torch.tensor([1.0, -0.5]),
                torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool),
            )[0]
        ),
        rel=1e-6,
    )
