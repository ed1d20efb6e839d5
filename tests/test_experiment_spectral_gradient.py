"""Experiment 2 (``experiments/spectral_gradient.py``) against independent references.

The probe rows are checked against closed forms computed in float64 NumPy (a circular
conv's row is ``conj(k_hat(nu_i))`` times a delta; ReLU's is ``mask_hat(nu_i - nu_j) / N``;
bilinear up-sampling is a fixed linear map whose dense matrix is conjugated by NumPy
DFT matrices). One run of ``main`` on the smallest setting (one preset, DeepLab v3+,
two training steps, crop 33) is checked for: the saved probe rows, the CE rows against
``jax.grad`` of a CE component written from Eq. 5 directly with ``jnp.fft`` (not
:func:`spectral_jax.ce_spectrum`) followed by a NumPy inverse DFT, and the CSV shares
and curves against a NumPy recomputation from the saved rows.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import runs
from experiments import spectral_gradient as exp
from experiments.configs import tiny
from spectral_jax import probes
from tests.helpers.outputs import read_csv

# float32 rows of maps with O(1) entries; the closed forms are float64.
ATOL = 2e-5


def _signed(n):
    return np.rint(np.fft.fftfreq(n) * n).astype(np.int64)


def _numpy_distance(nu_i, out_shape, in_shape, *, mirrored=False):
    """Chebyshev |nu_i - nu_j| by brute force; wraps only where the grids agree."""
    out = []
    for index in nu_i:
        coords = np.unravel_index(index, out_shape)
        targets = [tuple(_signed(n)[c] for c, n in zip(coords, out_shape, strict=True))]
        if mirrored:
            targets.append(tuple(-v for v in targets[0]))
        row = []
        for j in range(math.prod(in_shape)):
            in_coords = np.unravel_index(j, in_shape)
            nu_j = [_signed(n)[c] for c, n in zip(in_coords, in_shape, strict=True)]
            best = None
            for target in targets:
                d = 0
                for t, v, n_out, n_in in zip(target, nu_j, out_shape, in_shape, strict=True):
                    diff = t - v
                    if n_out == n_in:
                        diff = _signed(n_in)[diff % n_in]
                    d = max(d, abs(int(diff)))
                best = d if best is None else min(best, d)
            row.append(best)
        out.append(row)
    return np.array(out)


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (33, [(0, 0), (8, 8), (16, 16)]),
        (9, [(0, 0), (2, 2), (4, 4)]),
        (10, [(0, 0), (2, -5), (-5, 0)]),
    ],
)
def test_fig4_rows_are_flat_indices_of_the_input(size, expected):
    for factor in (1, 2):
        out_shape = (factor * size, factor * size)
        indices = exp.fig4_row_indices((size, size), out_shape)
        got = [exp.signed_frequency(i, out_shape) for i in indices]
        if factor == 1:
            flat = [0, size * size // 4, size * size // 2]
            assert list(indices) == flat
        assert got == expected


@pytest.mark.parametrize(
    "in_shape,out_shape", [((5, 5), (5, 5)), ((4, 5), (8, 10)), ((3, 3), (9, 9))]
)
def test_distances_match_brute_force(in_shape, out_shape):
    nu_all = exp.matching_output_indices(in_shape, out_shape)
    mirrored = exp.mirrored_distance(nu_all, out_shape=out_shape, in_shape=in_shape)
    np.testing.assert_array_equal(
        mirrored, _numpy_distance(nu_all, out_shape, in_shape, mirrored=True)
    )
    # Each input frequency maps to the output frequency with the same signed value.
    for j, index in enumerate(nu_all):
        in_coords = np.unravel_index(j, in_shape)
        nu_j = tuple(int(_signed(n)[c]) for c, n in zip(in_coords, in_shape, strict=True))
        assert exp.signed_frequency(index, out_shape) == nu_j


@pytest.mark.parametrize("size", [10, 11])
def test_conv_rows_are_the_kernel_spectrum_times_a_delta(size):
    case = exp.run_probe("conv", size)
    k_hat = np.fft.fft2(
        probes.embedded_kernel(case["kernel"].astype(np.float64), (size, size)), axes=(0, 1)
    )
    expected = np.zeros((3, size * size), np.complex128)
    for k, index in enumerate(case["nu_i"]):
        expected[k, index] = np.conj(k_hat[..., 0, 0].reshape(-1)[index])
    np.testing.assert_allclose(case["rows"], expected, atol=ATOL)
    np.testing.assert_allclose(case["all_share_r0"], 1.0, atol=1e-6)


@pytest.mark.parametrize("size", [10, 11])
def test_relu_rows_are_the_mask_spectrum(size):
    case = exp.run_probe("relu", size)
    mask = (case["x"][..., 0] > 0).astype(np.float64)
    mask_hat = np.fft.fft2(mask)
    n = size * size
    for k, index in enumerate(case["nu_i"]):
        ki = np.unravel_index(index, (size, size))
        kh, kw = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
        expected = mask_hat[(ki[0] - kh) % size, (ki[1] - kw) % size] / n
        np.testing.assert_allclose(case["rows"][k], expected.reshape(-1), atol=ATOL)
    # Parseval: the diagonal holds mean(mask) of each row's energy.
    np.testing.assert_allclose(case["share_r0"], mask.mean(), atol=1e-5)


@pytest.mark.parametrize("size", [6, 7])
def test_upsample_rows_match_the_dense_map_in_numpy(size):
    case = exp.run_probe("upsample", size)
    n_in, n_out = size * size, 4 * size * size
    # The up-sampling is linear: its dense matrix from the images of the basis maps.
    basis = np.eye(n_in).reshape(n_in, size, size, 1)
    with jax.enable_x64(True):
        resize = jax.vmap(functools.partial(probes.upsample_bilinear, factor=2))
        dense = np.asarray(resize(jnp.asarray(basis))).reshape(n_in, n_out).T  # [M', M]

    def dft(m):
        k = np.arange(m)
        return np.exp(-2j * np.pi * np.outer(k, k) / m)

    f_out = np.kron(dft(2 * size), dft(2 * size))
    f_in_inv = np.kron(dft(size), dft(size)).conj() / n_in
    jac = f_out @ dense @ f_in_inv
    np.testing.assert_allclose(case["rows"], jac[case["nu_i"]], atol=ATOL)


# ---------------------------------------------------------------------------------------
# One run of main on the smallest setting.


# Training, evaluation and compilation take about a minute of CPU time: slow suite.
pytestmark_main = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp("spectral_gradient")
    argv = ["spectral_gradient", f"--workdir={workdir}", "--datasets=pascal", "--models=deeplab"]
    argv += [f"--config.data_dir={data_dir}", "--config.num_train_steps=2"]
    argv += ["--config.crop_size=33", "--config.eval_split=validation[:2]", "--probe_size=9"]
    report = exp.main(argv)
    return workdir, report, argv, data_dir


def _case(workdir, name):
    with np.load(workdir / "cases" / f"{name}.npz") as saved:
        return dict(saved)


@pytestmark_main
def test_main_writes_the_report_and_figures(run):
    workdir, report, _, _ = run
    text = report.read_text()
    for name in ("fig4_probes.png", "fig4_ce_deeplab.png", "energy_by_distance.png"):
        assert (workdir / name).stat().st_size > 1000
        assert name in text
    assert "delta-like" in text


@pytestmark_main
def test_main_probe_conv_rows_are_the_closed_form(run):
    workdir, _, _, _ = run
    case = _case(workdir, "probe_conv_9")
    k_hat = np.fft.fft2(
        probes.embedded_kernel(case["kernel"].astype(np.float64), (9, 9)), axes=(0, 1)
    )
    diag = np.conj(k_hat[..., 0, 0].reshape(-1))[case["nu_i"]]
    expected = np.zeros((3, 81), np.complex128)
    expected[np.arange(3), case["nu_i"]] = diag
    np.testing.assert_allclose(case["rows"], expected, atol=ATOL)


@pytestmark_main
def test_main_ce_rows_match_grad_of_eq5(run):
    """Rows of the channel-summed CE spectral gradient from ``jax.grad`` and NumPy DFTs."""
    workdir, _, _, data_dir = run
    config = tiny.get_config()
    config.update(data_dir=data_dir, eval_split="validation[:2]")
    config = runs.experiment_config(config, model="deeplab", dataset="pascal")
    model, variables = runs.restore_trained(config, workdir / "train" / "deeplab_pascal" / "seed0")
    image, labels, ignore = exp.validation_example(config, 0)
    image = jnp.asarray(image)
    aspp, low_level = model.apply(variables, image, method="encode")
    size = tuple(image.shape[1:3])
    case = _case(workdir, "ce_deeplab_pascal")

    def component(features, index):  # L_ce(nu) of Eq. 5, written with jnp.fft directly
        logits = model.apply(variables, features[None], low_level, size, method="decode")
        logits = logits["logits"][0]  # [S, S, C]
        valid = labels != ignore
        num_classes = logits.shape[-1]
        b = jax.nn.one_hot(jnp.where(valid, labels, 0), num_classes) * valid[..., None]
        # Eq. 5 with the default ignore_mode="labels": only the one-hot labels are zero at
        # ignored pixels; the log-probabilities of every pixel are transformed.
        y_p = jax.nn.logsumexp(logits, axis=-1)
        y = logits
        b_hat = jnp.fft.fft2(b, axes=(0, 1))
        yhat = jnp.fft.fft2(y_p, axes=(0, 1))[..., None] - jnp.fft.fft2(y, axes=(0, 1))
        total = jnp.sum(jnp.conj(b_hat) * yhat, axis=-1).real
        return total.reshape(-1)[index] / (valid.sum() * size[0] * size[1])

    in_shape = tuple(aspp.shape[1:3])
    for k, index in enumerate(case["nu_i"]):
        grad = np.asarray(jax.grad(component)(aspp[0], int(index)), np.float64)  # [Hs, Ws, Ca]
        expected = np.fft.ifft2(grad.sum(-1)).reshape(-1)
        scale = np.abs(expected).max()
        np.testing.assert_allclose(case["rows"][k], expected, atol=1e-4 * scale)
    assert tuple(case["in_shape"]) == in_shape


@pytestmark_main
def test_main_csv_shares_and_curves_match_the_saved_rows(run):
    workdir, _, _, _ = run
    shares = read_csv(workdir / "diagonal_energy.csv")
    curves = read_csv(workdir / "energy_by_distance.csv")
    checked = 0
    for name, label in [
        ("probe_conv_zero_9", "conv_zero"),
        ("probe_relu_9", "relu"),
        ("probe_upsample_9", "upsample"),
        ("ce_deeplab_pascal", "ce_deeplab_pascal"),
    ]:
        case = _case(workdir, name)
        in_shape, out_shape = tuple(case["in_shape"]), tuple(case["out_shape"])
        power = np.abs(case["rows"].astype(np.complex128)) ** 2
        measures = [(False, "share", "energy_fraction"), (True, "pm_share", "energy_fraction_pm")]
        for mirrored, prefix, column in measures:
            dist = _numpy_distance(case["nu_i"], out_shape, in_shape, mirrored=mirrored)
            for k, row_name in enumerate(("0", "M/4", "M/2")):
                (line,) = [s for s in shares if s["case"] == label and s["row"] == row_name]
                for r in exp.RADII:
                    expected = power[k][dist[k] <= r].sum() / power[k].sum()
                    np.testing.assert_allclose(float(line[f"{prefix}_r{r}"]), expected, atol=1e-6)
                    flat = np.mean(dist[k] <= r)
                    flat_key = "pm_flat" if mirrored else "flat"
                    np.testing.assert_allclose(float(line[f"{flat_key}_r{r}"]), flat, atol=1e-12)
                curve = [c for c in curves if c["case"] == label and c["row"] == row_name]
                for c in curve:
                    expected = power[k][dist[k] == int(c["distance"])].sum() / power[k].sum()
                    np.testing.assert_allclose(float(c[column]), expected, atol=1e-6)
                checked += 1
    assert checked == 24


@pytestmark_main
def test_main_resumes_without_recomputing(run):
    workdir, _, argv, _ = run
    stamp = (workdir / "cases" / "ce_deeplab_pascal.npz").stat().st_mtime_ns
    exp.main(argv)
    assert (workdir / "cases" / "ce_deeplab_pascal.npz").stat().st_mtime_ns == stamp


@pytestmark_main
def test_main_cell_section_gives_the_rows_diagonal_shares(run):
    """The per-cell section (the demo's :func:`exp.model_section`) shows each Fig. 4 row's
    share of |row|^2 at nu_i and within distance 1, recomputed in NumPy from the saved rows."""
    workdir, report, _, _ = run
    section = report.read_text().split("### DeepLab v3+ on pascal (synthetic_scenes/pascal_like)")
    assert len(section) == 2
    section = section[1].split("\n## ")[0]
    case = _case(workdir, "ce_deeplab_pascal")
    in_shape, out_shape = tuple(case["in_shape"]), tuple(case["out_shape"])
    power = np.abs(case["rows"].astype(np.complex128)) ** 2
    dist = _numpy_distance(case["nu_i"], out_shape, in_shape, mirrored=False)
    for radius, name in ((0, "diagonal"), (1, "|ν_i − ν_j| ≤ 1")):
        shares = [power[k][dist[k] <= radius].sum() / power[k].sum() for k in range(3)]
        line = f"| dL_ce/dx̂, ASPP ({name}) | " + " | ".join(f"{v:.3f}" for v in shares) + " |"
        assert line in section
    aspp = f"{in_shape[0]} x {in_shape[1]} x {int(case['channels'])}"
    assert f"ASPP output ({aspp}) on validation image 0" in section
