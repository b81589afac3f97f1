"""``benchmarks.channel_latency``: FLOP ratios of compact widths, a timed run's JSON layout, width parsing."""

import pytest
from absl import app

from benchmarks import channel_latency


def test_conv_flops_count_each_block_at_its_pooled_size():
  # 28x28 -> 14 -> 7 -> 3: 2 x pixels x 9 x fan-in x width per block.
  assert channel_latency.conv_flops((64, 64, 64, 64), 28) == 2 * 9 * (784 * 64 + (196 + 49 + 9) * 64 * 64)
  half = channel_latency.conv_flops((32, 32, 32, 32), 28) / channel_latency.conv_flops((64,) * 4, 28)
  assert abs(half - (784 * 32 + 254 * 32 * 32) / (784 * 64 + 254 * 64 * 64)) < 1e-12


def test_run_times_every_width_against_dense():
  result = channel_latency.run([(2, 4, 4, 4), (64, 64, 64, 64)], batches=(2,), repeats=1, calls=1, image_size=16)
  rows = {tuple(r['widths']): r for r in result['models']}
  assert set(rows) == {(64, 64, 64, 64), (2, 4, 4, 4)}  # Dense once, first.
  assert rows[(64, 64, 64, 64)]['batch_2']['latency_ratio'] == 1.0 and rows[(64, 64, 64, 64)]['flop_ratio'] == 1.0
  small = rows[(2, 4, 4, 4)]
  assert small['channels_removed'] == 1.0 - 14 / 256 and 0.0 < small['flop_ratio'] < 0.01
  assert small['batch_2']['median_ms'] > 0.0


@pytest.mark.parametrize('text', ['32-x', '', '0-32', '65-1'])
def test_bad_widths_name_the_flag(text):
  with pytest.raises(app.UsageError, match='--widths'):
    channel_latency.parse_widths(text)
