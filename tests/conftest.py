"""Shared fixtures: a private dataset cache and one tiny config for training tests."""

import os
import signal

import pytest


# Prepared datasets go to a per-session folder, never to the user's cache.
@pytest.fixture(scope="session", autouse=True)
def _dataset_cache(tmp_path_factory):
  os.environ["JAXSEG_CACHE"] = str(tmp_path_factory.mktemp("jaxseg_cache"))
  yield


# XLA's CPU backend spends most of a test's time compiling: without LLVM's
# optimisation passes it compiles ~3x faster, and with its classic loop emitters
# instead of the MLIR fusion emitters another ~15% (a CPS round: 14.7 -> 12.5 s
# of CPU), and runs these tiny programs as fast. Set before JAX starts, so it also
# holds for the subprocesses the tests launch.
os.environ["XLA_FLAGS"] = (
  f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0"
  " --xla_cpu_use_fusion_emitters=false"
)


# Tests that build the same computation again (a resumed run, another test's tiny
# config, a subprocess) load it from one persistent compilation cache shared by all
# pytest-xdist workers, instead of compiling it anew.
@pytest.fixture(scope="session", autouse=True)
def _compilation_cache(tmp_path_factory):
  import jax

  root = tmp_path_factory.getbasetemp()
  if "PYTEST_XDIST_WORKER" in os.environ:
    root = root.parent
  cache = str(root / "jax_cache")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = cache
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  jax.config.update("jax_compilation_cache_dir", cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  yield


# The longest tests (seconds in `.ci/run`'s --durations, fixture setup included) run
# first, longest first: with `--dist loadgroup` the workers then take the short tests
# as they come free and end together, instead of one finishing a long test alone.
# (pytest-xdist's groups, ``--dist loadgroup`` with ``xdist_group`` markers, do not
# act under pytest 9: xdist renames ``item._nodeid``, which pytest 9 no longer reads;
# the command keeps ``loadgroup``, which without groups is ``load``.) The order also
# keeps test_flower's FedWeP test before the killed-site test, which stops a site of
# their shared deployment.
LONGEST = {
  "test_scaling.py::test_two_processes_train_like_one": 102,
  "test_flower.py::test_flower_fedwep_ends_with_the_simulations_global_model": 87,
  "test_flower.py::test_flower_security_only_operators_control_and_only_registered_sites_join": 70,
  "test_volumes.py::test_3d_fedwep_is_reproducible_and_resumes_exactly": 52,
  "test_flower.py::test_flower_a_killed_site_does_not_stall_the_run": 34,
  "test_bench.py::test_accelerator_suite_runs_every_part_on_cpu": 50,
  "test_bench.py::test_versus_torch_times_the_same_network_and_loss_in_both": 20,
  "test_prob_unet.py::test_prob_unet_and_baseline_train_on_lidc_and_report_ged": 32,
  "test_flower.py::test_flower_sampled_and_compressed_rounds_are_the_simulations": 31,
  "test_flower.py::test_flower_volume_sites_train_as_the_simulation_of_their_folders": 30,
  "test_train.py::test_host_path_with_workers_is_reproducible_and_resumes_exactly": 26,
  "test_end_to_end.py::test_isbi_smoke_train_eval_predict": 21,
  "test_gan.py::test_gan_trains_resumes_exactly_and_synthesizes_a_dataset": 20,
  "test_volumes.py::test_3d_semi_supervised_runs_are_reproducible_and_resume_exactly": 19,
  "test_fed.py::test_fedwep_tables_smoke_sweep_writes_the_papers_layout": 19,
  "test_fed.py::test_client_axis_sharded_over_eight_devices_matches_one_device": 16,
  "test_volumes.py::test_predict_writes_aligned_nifti_whose_dice_is_evals": 15,
  "test_train.py::test_semi_supervised_run_resumes_exactly": 15,
  "test_gan.py::test_augmentation_study_smoke_sweep": 15,
  "test_train.py::test_cli_smoke_train_and_eval": 14,
  "test_scaling.py::test_data_parallel_trajectory_matches_one_device": 14,
  "test_fed.py::test_streamed_scanned_or_looped_rounds_equal_the_vmapped_round_on_device": 13,
  "test_end_to_end.py::test_covid_ct_smoke_with_segformer": 13,
  "test_volumes.py::test_3d_training_draws_the_same_batches_on_1_2_and_4_devices": 12,
  "test_volumes.py::test_3d_eval_writes_per_case_metrics": 11,
  "test_train.py::test_kill_during_an_async_save_keeps_the_previous_checkpoint": 10,
  "test_semi.py::test_pseudoseg_step_trains_the_classification_branch": 10,
  "test_fed.py::test_federated_configs_train_and_evaluate": 10,
  "test_fed.py::test_a_padded_client_changes_nothing": 9,
  "test_models.py::test_forward_backward": 8,
  "test_train.py::test_same_config_is_bitwise_reproducible": 7,
  "test_train.py::test_truncated_latest_checkpoint_is_set_aside_and_the_run_resumes": 6,
  "test_sweep.py::test_sweep_runs_cells_and_resumes": 6,
  "test_scaling.py::test_a_semi_supervised_method_trains_in_bfloat16": 6,
  "test_fed.py::test_one_client_equals_centralized_training": 6,
  "test_data.py::test_intensity_threshold_baseline_is_poor": 6,
}


def pytest_collection_modifyitems(items):
  name = lambda item: item.nodeid.split("[")[0].removeprefix("tests/")  # noqa: E731
  items.sort(key=lambda item: -LONGEST.get(name(item), 0))  # stable: the rest keep their order


def make_tiny_config():
  """The smoke config shrunk further: 32 px, widths (4, 8), 6 steps."""
  from configs import unet_synthetic

  config = unet_synthetic.get_config("smoke")
  config.model.kwargs.widths = (4, 8)
  config.data.kwargs.update(num_train=16, num_validation=4, num_test=4)
  config.train.update(steps=6, eval_every=3, log_every=2)
  config.eval.batch_size = 4
  return config


@pytest.fixture
def tiny_config():
  return make_tiny_config()


def sigterm_at(monkeypatch, step: int) -> None:
  """Every run loop (``loop.remaining``) sends this process SIGTERM as ``step``
  (or round) begins, as a preempting scheduler would; ``monkeypatch.undo()`` ends it."""
  from jaxseg.run import loop  # noqa: PLC0415

  steps = loop.remaining

  def remaining(*args):
    for s in steps(*args):
      if s == step:
        os.kill(os.getpid(), signal.SIGTERM)
      yield s

  monkeypatch.setattr(loop, "remaining", remaining)
