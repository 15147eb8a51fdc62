"""The cost model (SPEC s.6): a hand count, the paper's calibration window, the command."""

import json

import pytest

from itnet_keras import build_itnet
from itnet_keras.costs import main, output_costs, preset_costs

# f=8 (f_r=4), L=1, K=1, t=2, 3 classes on a 16x16 image: every conv counted by hand.
HAND = dict(num_classes=3, width=8, num_scales=1, num_blocks=1, expansion=2)


def test_macs_bytes_and_depth_against_a_hand_count():
    rows = output_costs(build_itnet(**HAND, num_iterations=2), (16, 16))
    data = 8 * 8 * 1 * 9 * 3 + 4 * 4 * 4 * 9 * 4 + 2 * 2 * 8 * 9 * 8  # stage 1, stage 2, S_1
    block = 2 * 2 * 16 * 8 + 2 * 2 * 16 * 9 + 2 * 2 * 8 * 16  # expand, depthwise, project
    head = 2 * 2 * 3 * 8
    mix = 2 * 2 * 8 * 9 * 8 + 2 * 2 * 8 * 8  # conv3x3 and 1x1 projection (iteration 2 only)
    assert [r["macs"] for r in rows] == [data + block + head, data + 2 * (block + head) + mix]
    # Graph size: per conv, parameters + input map + output map, in float32.
    convs_1 = [(27, 768, 64), (144, 256, 64), (576, 128, 32),  # data block (no biases)
               (144, 32, 64), (160, 64, 64), (136, 64, 32), (27, 32, 12)]  # block + head
    assert rows[0]["graph_bytes_collapsed"] == rows[0]["graph_bytes_unrolled"] == 4 * sum(map(sum, convs_1))
    mix_convs = [(8 * 9 * 8 + 8, 32, 32), (8 * 8 + 8, 32, 32)]
    again = convs_1[3:] + mix_convs
    assert rows[1]["graph_bytes_unrolled"] == 4 * (sum(map(sum, convs_1)) + sum(map(sum, again)))
    # Collapsed with sharing: the block counts once, the heads once per output (2 sets).
    assert rows[1]["graph_bytes_collapsed"] == 4 * (sum(map(sum, convs_1)) + sum(map(sum, mix_convs)) + 27)
    assert [r["depth"] for r in rows] == [7, 7 + 1 + 3]  # mixing adds one conv (in parallel with its 1x1)
    assert rows[0]["state_bytes"] == 4 * 2 * 2 * 8


def test_params_follow_the_model():
    for sharing in (True, False):
        model = build_itnet(**HAND, num_iterations=3, weight_sharing=sharing)
        trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
        assert output_costs(model, (16, 16))[-1]["params"] == trainable


def _last_macs(width):
    return preset_costs("camvid_independent", width=width)[-1]["macs"]


def test_calibration_against_the_paper():
    """SPEC s.6: the largest f under 2.2e9 MACs is the paper's 29; f=51 costs about 6.2e9."""
    assert 2.0e9 <= _last_macs(29) < 2.2e9 <= _last_macs(30)
    assert _last_macs(51) == pytest.approx(6.2e9, rel=0.05)
    shared = preset_costs("camvid_shared")[-1]["macs"]
    assert shared == _last_macs(51)  # sharing changes the weights, not the arithmetic


def test_shared_graph_is_smaller_collapsed():
    shared, independent = preset_costs("camvid_shared")[-1], preset_costs("camvid_independent")[-1]
    assert shared["graph_bytes_collapsed"] < shared["graph_bytes_unrolled"]
    assert shared["graph_bytes_collapsed"] < independent["graph_bytes_unrolled"]
    assert shared["params"] < independent["params"]


def test_command_prints_json(capsys):
    main(["--preset", "tiny", "--input-size", "32x48", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert [r["output"] for r in rows] == [1, 2, 3, 4]
    assert set(rows[0]) == {"output", "macs", "params", "graph_bytes_collapsed", "graph_bytes_unrolled",
                            "depth", "state_bytes"}
    assert all(a["macs"] < b["macs"] for a, b in zip(rows, rows[1:]))


def test_command_table_and_errors(capsys):
    main(["--preset", "camvid_independent", "--width", "30"])
    assert "| 16 | 2.234 |" in capsys.readouterr().out
    main(["--preset", "tiny"])  # four significant digits (was: 0.000 GMACs for outputs 1 to 3)
    assert "| 1 | 0.0001446 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--preset", "nope"])
    assert "unknown preset 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--preset", "tiny", "--input-size", "big"])
    assert "argument --input-size: 'big': expected HEIGHTxWIDTH" in capsys.readouterr().err  # the flag named once
