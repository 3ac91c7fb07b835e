"""Extension points of the samplers: the solver registry, the noise source, the prior hook (docs/design.md)."""
import importlib
import importlib.util
import os
import sys

import pytest
import torch
from click.testing import CliRunner

import samplers
from samplers import analytic, selection
from samplers.analytic import CountingNet
from torch_utils.misc import StackedRandomGenerator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _gaussian(shape=(1, 2, 2)):
    g = torch.Generator().manual_seed(3)
    return analytic.Gaussian(0.3 * torch.rand(shape, generator=g, dtype=torch.float64),
                             0.01 + 0.01 * torch.rand(shape, generator=g, dtype=torch.float64))


def midpoint(s):
    """Explicit midpoint rule in sigma (Runge's second-order method), a toy for the registry tests. NFE = 2 (N - 1)."""
    x_mid = s.x + 0.5 * s.h * s.d
    return s.x + s.h * s.model.derivative(x_mid, s.t_cur + 0.5 * s.h)


def euler_maruyama(s, churn=1.0):
    """Toy stochastic rule: an Euler step followed by fresh noise of size churn * |h|. NFE = N - 1."""
    return s.x + s.h * s.d + churn * s.h.abs().sqrt() * s.randn_like(s.x)


@pytest.fixture
def toy_solvers():
    samplers.register_solver(samplers.SolverSpec('toy_midpoint', midpoint, evals_per_step=2, order=2,
                                                 doc='explicit midpoint (toy)'))
    samplers.register_solver(samplers.SolverSpec('toy_em', euler_maruyama, dict(churn=1.0), stochastic=True,
                                                 teacher=False, doc='Euler-Maruyama (toy)'))
    yield
    samplers.unregister_solver('toy_midpoint')
    samplers.unregister_solver('toy_em')
    if 'generate' in sys.modules:
        importlib.reload(sys.modules['generate'])  # its --solver choices are read from the registry at import


def test_registered_solver_is_usable_counted_and_listed(toy_solvers):
    net = _gaussian()
    lat = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    counter = CountingNet(net)
    x = samplers.sample(counter, lat, solver='toy_midpoint', num_steps=9)
    assert counter.calls == samplers.solver_nfe('toy_midpoint', 9) == 16
    assert samplers.solver_nfe('toy_midpoint', 9, afs=True, denoise_to_zero=True) == 16
    # It solves the ODE: at least second order against the exact flow of a Gaussian (measured: 2.97 here, as
    # the midpoint rule in sigma is exact to one order more on this linear problem; Heun measures 2.07).
    order, errs = analytic.empirical_order(*analytic.order_study_problem(), 'toy_midpoint', [16, 32, 64, 128])
    assert order >= 1.8 and errs[-1] < 1e-4, (order, errs)
    assert torch.isfinite(x).all()
    # Listed wherever solvers are listed.
    assert 'toy_midpoint' in samplers.SOLVERS and 'toy_midpoint' in samplers.solver_names(kind='ode')
    assert 'toy_midpoint' in samplers.solver_names(kind='ode', teacher=True)
    assert 'toy_em' not in samplers.solver_names(teacher=True)
    assert 'churn' in samplers.option_names()
    kind, kwargs = selection.choose_sampler(dict(solver='toy_midpoint', num_steps=5, afs=False,
                                                 denoise_to_zero=False), note=lambda *a: None)
    assert kind == 'fast' and selection.describe_nfe(kind, kwargs) == 8
    generate = importlib.reload(importlib.import_module('generate'))
    help_text = CliRunner().invoke(generate.main, ['--help'], terminal_width=200).output
    assert 'toy_midpoint' in help_text and 'toy_em' in help_text
    spec = importlib.util.spec_from_file_location('samplers_benchmark', os.path.join(ROOT, 'benchmarks', 'samplers.py'))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert ('explicit midpoint (toy)', 'toy_midpoint', {}, False) in bench.make_rows()
    assert '`toy_em`' in bench.solver_table()
    # The GITS teacher choice is derived from the registry too.
    states, derivs = samplers.teacher_trajectory(net, lat, samplers.get_schedule(4, 0.002, 80, dtype=torch.float64),
                                                 solver='toy_midpoint')
    assert states.shape[0] == 4 and derivs.shape[0] == 3
    with pytest.raises(ValueError, match='GITS teacher'):
        samplers.teacher_trajectory(net, lat, samplers.get_schedule(4, 0.002, 80), solver='toy_em')
    with pytest.raises(TypeError, match='does not accept'):
        samplers.sample(net, lat, solver='toy_midpoint', max_order=2)


def test_unregistered_solver_is_gone(toy_solvers):
    samplers.unregister_solver('toy_midpoint')
    with pytest.raises(ValueError, match='unknown solver'):
        samplers.sample(_gaussian(), torch.zeros(1, 1, 2, 2), solver='toy_midpoint')


def test_stochastic_solver_draws_only_through_randn_like(toy_solvers):
    net = _gaussian()
    seeds = [5, 6, 7]
    lat = StackedRandomGenerator('cpu', seeds).randn([3, 1, 2, 2])

    def run(seed_list):
        gen = StackedRandomGenerator('cpu', seed_list)
        torch.manual_seed(123)  # the global generator must not matter
        out = samplers.sample(net, lat, solver='toy_em', num_steps=6, randn_like=gen.randn_like)
        torch.manual_seed(456)
        return out

    a, b = run(seeds), run(seeds)
    assert torch.equal(a, b)
    c = run([5, 6, 8])
    assert torch.equal(a[:2], c[:2]) and not torch.equal(a[2], c[2])  # each sample's noise is its own seed's
    # A generator passed as `generator` is the default noise source.
    d = samplers.sample(net, lat, solver='toy_em', num_steps=6, generator=StackedRandomGenerator('cpu', seeds))
    assert torch.equal(a, d)


def test_edm_sampler_noise_comes_from_randn_like():
    net = _gaussian()
    lat = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    kw = dict(solver='edm', num_steps=5, S_churn=20.0)
    a = samplers.sample(net, lat, generator=StackedRandomGenerator('cpu', [1, 2]), **kw)
    b = samplers.sample(net, lat, generator=StackedRandomGenerator('cpu', [1, 2]), **kw)
    c = samplers.sample(net, lat, generator=StackedRandomGenerator('cpu', [1, 3]), **kw)
    assert torch.equal(a, b) and torch.equal(a[0], c[0]) and not torch.equal(a[1], c[1])


class _StudentTPrior:
    """A non-Gaussian prior drawing one extra number per sample from the per-seed generator (as PFGM++ will)."""

    def __call__(self, latents, sigma, generator):
        self.sigma = sigma
        u = generator.rand([latents.shape[0], 1, 1, 1], dtype=latents.dtype, device=latents.device)
        return latents * sigma * (0.5 + u)


def test_prior_hook_reaches_every_solver_kind():
    net = _gaussian()
    seeds = [0, 1]
    for solver, options in (('euler', dict(num_steps=4)), ('edm', dict(num_steps=3)), ('dpmpp', {})):
        lat = StackedRandomGenerator('cpu', seeds).randn([2, 1, 2, 2])
        plain = samplers.sample(net, lat, solver=solver, **options)
        same = samplers.sample(net, lat, solver=solver, prior=samplers.gaussian_prior, **options)
        assert torch.equal(plain, same)
        gen = StackedRandomGenerator('cpu', seeds)
        gen.randn([2, 1, 2, 2])  # the latents come first, as in samplers.generation.draw_inputs
        prior = _StudentTPrior()
        _, traj = samplers.sample(net, lat, solver=solver, prior=prior, generator=gen, return_trajectory=True,
                                  **options)
        assert float(prior.sigma) == pytest.approx(80.0, rel=1e-6)
        ref = StackedRandomGenerator('cpu', seeds)
        ref.randn([2, 1, 2, 2])
        scale = 0.5 + ref.rand([2, 1, 1, 1], dtype=traj.dtype)
        assert torch.equal(traj[0], lat.to(traj.dtype) * prior.sigma * scale)


def test_net_provides_its_prior():
    base = _gaussian()

    class Shifted(CountingNet):
        def sample_prior(self, latents, sigma, generator):
            return latents * sigma + 1000.0

    lat = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    _, traj = samplers.sample(Shifted(base), lat, solver='euler', num_steps=3, return_trajectory=True)
    assert torch.equal(traj[0], torch.full_like(lat, 1000.0))
