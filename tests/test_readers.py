"""The scene-analysis readers (`read_music`, `read_vggss`, `box_mask`) on tiny files written here in the datasets' exact layouts."""
import json

import numpy as np
import pytest

from avc_nb.core import AvcError
from avc_nb.data import ClipError, ManifestError, box_mask, read_manifest, read_music, read_vggss, write_clip, write_manifest

# the first entries of the real lists (github.com/roudimit/MUSIC_dataset), in their format: version + videos
SOLO = {"version": 1.0, "videos": {"flute": ["jW_AuF6dQYY", "3wPouBFa9U0", "eHbxLcoLWYY", "cTO_2R81fdY", "yaWxyD4zFKE"],
                                   "acoustic_guitar": ["M3dekVSwNjY", "aaaaaaaaaaa"]}}
SOLO21 = {"version": 2.0, "videos": {"bagpipe": ["kw-OQpF9N4E", "XEj3ejyxjNU"], "flute": ["jW_AuF6dQYY"]}}
DUET = {"version": 1.0, "videos": {"flute violin": ["8DHG_hVSw1o", "XbOYpwFkn7o"],
                                   "saxophone acoustic_guitar": ["ywH4K8mQ-1s"]}}


def music(root, layout="solo_dirs", drop=()):
    """The three JSON lists at the root and stand-in files in one of the layouts download scripts use."""
    (root / "MUSIC_solo_videos.json").write_text(json.dumps(SOLO, indent=4))
    (root / "MUSIC21_solo_videos.json").write_text(json.dumps(SOLO21, indent=4))
    (root / "MUSIC_duet_videos.json").write_text(json.dumps(DUET, indent=4))
    for lst, sub in ((SOLO, "solo"), (SOLO21, "solo"), (DUET, "duet")):
        for cat, ids in lst["videos"].items():
            for yid in ids:
                if yid in drop:
                    continue
                if layout == "solo_dirs":  # videos/<solo|duet>/<category>/<id>.mp4
                    files = [root / "videos" / sub / cat.replace(" ", "_") / f"{yid}.mp4"]
                else:  # Sound of Pixels after preprocessing: audio/<cat>/<id>.mp3 and frames/<cat>/<id>.mp4/ (a folder of jpgs)
                    files = [root / "audio" / cat / f"{yid}.mp3"]
                    (root / "frames" / cat / f"{yid}.mp4").mkdir(parents=True, exist_ok=True)
                    (root / "frames" / cat / f"{yid}.mp4" / "000001.jpg").write_bytes(b"jpg")
                for f in files:
                    f.parent.mkdir(parents=True, exist_ok=True)
                    f.write_bytes(b"x")
    return root


def test_music_solo_and_duet(tmp_path):
    m = music(tmp_path)
    df = read_music(m).df.set_index("clip_id")
    assert len(df) == 10
    assert df.loc["8DHG_hVSw1o", "label"] == "flute violin" and df.loc["8DHG_hVSw1o", "instruments"] == "flute;violin"
    assert df.loc["ywH4K8mQ-1s", "instruments"] == "saxophone;acoustic_guitar"
    assert (df.n_sources == df.subset.map({"solo": 1, "duet": 2})).all()
    assert df.loc["M3dekVSwNjY", "video_path"].endswith("videos/solo/acoustic_guitar/M3dekVSwNjY.mp4")
    # the split: the last round(0.2 n) of each list, by position: flute 5 -> 1 test; guitar 2 -> 0; duets 2, 1 -> 0
    assert df.index[df.split == "test"].tolist() == ["yaWxyD4zFKE"]
    assert set(df.list) == {"MUSIC_solo_videos.json", "MUSIC_duet_videos.json"}


def test_music21_and_manifest_round_trip(tmp_path):
    m = music(tmp_path)
    man = read_music(m, solo_list="MUSIC21_solo_videos.json", duet_list=None)
    assert man.classes == ["bagpipe", "flute"] and len(man) == 3
    write_manifest(man, tmp_path / "music.csv")
    back = read_manifest(tmp_path / "music.csv")
    assert back.df.video_path.tolist() == man.df.video_path.tolist() and back.df.n_sources.tolist() == [1, 1, 1]


def test_music_sound_of_pixels_layout(tmp_path):
    """Audio-only files (mp3) are found by id; the frame folders named <id>.mp4 are folders, not videos."""
    df = read_music(music(tmp_path, layout="sop"), duet_list=None).df
    assert (df.video_path == "").all() and df.audio_path.str.endswith(".mp3").all()


def test_music_missing_video_named_or_skipped(tmp_path):
    m = music(tmp_path, drop=("cTO_2R81fdY",))
    with pytest.raises(ClipError, match=r"/solo/flute/cTO_2R81fdY\.mp4: file not found \(clip cTO_2R81fdY\)"):
        read_music(m)
    man = read_music(m, on_error="skip")
    assert len(man) == 9 and [s["clip_id"] for s in man.skipped] == ["cTO_2R81fdY"]
    # without checking files (a list read before the download): every clip, at the usual layout's path
    assert len(read_music(m, check_files=False)) == 10


@pytest.mark.parametrize("text, message", [
    ("", "not valid JSON"),
    ("[1, 2]", "no 'videos' object"),
    ('{"videos": {"flute": ["ok", 3]}}', "videos['flute'] must be a list of YouTube ids"),
])
def test_music_bad_lists(tmp_path, text, message):
    m = music(tmp_path)
    (m / "MUSIC_duet_videos.json").write_text(text)
    with pytest.raises(ManifestError) as e:
        read_music(m)
    assert "MUSIC_duet_videos.json" in str(e.value) and message in str(e.value)
    assert isinstance(e.value, AvcError)


def test_music_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="MUSIC_solo_videos.json"):
        read_music(tmp_path)
    with pytest.raises(ValueError, match="test_fraction"):
        read_music(tmp_path, test_fraction=1.0)
    with pytest.raises(ValueError, match="solo_list or duet_list"):
        read_music(tmp_path, solo_list=None, duet_list=None)


# the first entries of metadata/vggss.json of the LVS and EZ-VSL code, and one made-up clip with two boxes
VGGSS = [{"file": "zpWuikVorYg_000032", "class": "elk bugling", "bbox": [[0.403125, 0.253125, 0.6, 0.75]]},
         {"file": "gEvCUcZ6w88_000030", "class": "female speech, woman speaking",
          "bbox": [[0.45, 0.190625, 0.584375, 0.47812499999999997]]},
         {"file": "JIemsK_0lXc_000364", "class": "playing bass drum", "bbox": [[0.03125, 0.3625, 0.36875, 0.9875]]},
         {"file": "made_up_two_000010", "class": "playing cello", "bbox": [[-0.01, 0.0, 0.5, 0.5], [0.25, 0.3, 1.01, 1.0]]}]


def vggss(root, metadata_dir=False, drop=()):
    """EZ-VSL's layout: frames/<file>.jpg, audio/<file>.wav, and (metadata/)vggss.json + vggss_test.csv."""
    meta = root / "metadata" if metadata_dir else root
    meta.mkdir(parents=True, exist_ok=True)
    (meta / "vggss.json").write_text(json.dumps(VGGSS))
    (meta / "vggss_test.csv").write_text("".join(a["file"] + "\n" for a in VGGSS[:3]))
    (root / "frames").mkdir(exist_ok=True)
    (root / "audio").mkdir(exist_ok=True)
    for a in VGGSS:
        if a["file"] not in drop:
            (root / "frames" / f"{a['file']}.jpg").write_bytes(b"\xff\xd8")
            write_clip(root / "audio" / f"{a['file']}.wav", audio=np.zeros(800, np.float32))
    return root


def reference_gt_map(bboxes, size=224):
    """EZ-VSL's load_all_bboxes(format='vggss') + bbox2gtmap, as written there."""
    gt_map = np.zeros([size, size])
    for xmin, ymin, xmax, ymax in [(np.clip(np.array(b), 0, 1) * size).astype(int) for b in bboxes]:
        temp = np.zeros([size, size])
        temp[ymin:ymax, xmin:xmax] = 1
        gt_map += temp
    gt_map[gt_map > 0] = 1
    return gt_map


def reference_flickr_map(pixel_boxes):
    """LVS utils.testset_gt for Flickr: 256-pixel boxes scaled to 224, summed, halved, clipped at 1."""
    gt_map = np.zeros([224, 224])
    for b in pixel_boxes:
        x0, y0, x1, y1 = (int(224 * int(v) / 256) for v in b)
        temp = np.zeros([224, 224])
        temp[y0:y1, x0:x1] = 1
        gt_map += temp
    gt_map /= 2
    gt_map[gt_map > 1] = 1
    return gt_map


@pytest.mark.parametrize("metadata_dir", [False, True])
def test_vggss_reads_boxes_frames_and_audio(tmp_path, metadata_dir):
    root = vggss(tmp_path, metadata_dir)
    man = read_vggss(root)
    df = man.df
    assert df.clip_id.tolist() == [a["file"] for a in VGGSS] and (df.split == "test").all()
    assert df.label.tolist() == [a["class"] for a in VGGSS] and df.n_boxes.tolist() == [1, 1, 1, 2]
    assert df.frame_path.str.endswith(".jpg").all() and df.audio_path.str.endswith(".wav").all()
    for a, b in zip(VGGSS, df.boxes):
        assert json.loads(b) == a["bbox"]
        np.testing.assert_array_equal(box_mask(b), reference_gt_map(a["bbox"]))
    listed = read_vggss(root, test_list=(root / "metadata" if metadata_dir else root) / "vggss_test.csv")
    assert listed.df.clip_id.tolist() == [a["file"] for a in VGGSS[:3]]
    write_manifest(man, tmp_path / "m.csv")  # frame_path is a *_path column: it survives the round trip
    assert read_manifest(tmp_path / "m.csv").df.frame_path.tolist() == df.frame_path.tolist()


def test_box_mask_matches_the_reference_code_on_random_boxes():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 4))
        lo = rng.uniform(-0.1, 0.8, (n, 2))
        boxes = np.concatenate([lo, lo + rng.uniform(0.01, 0.5, (n, 2))], 1).tolist()
        np.testing.assert_array_equal(box_mask(boxes), reference_gt_map(boxes))
        px = rng.integers(0, 256, (3, 4))
        px[:, 2:] = np.maximum(px[:, 2:], px[:, :2] + 1)
        np.testing.assert_array_equal(box_mask((px / 256).tolist(), consensus=2), reference_flickr_map(px.tolist()))
    with pytest.raises(ValueError, match="consensus"):
        box_mask([[0, 0, 1, 1]], consensus=0)
    with pytest.raises(ValueError, match=r"\[x0, y0, x1, y1\]"):
        box_mask([[0, 0, 1]])


def test_vggss_missing_files_and_bad_annotations(tmp_path):
    root = vggss(tmp_path / "a", drop=("JIemsK_0lXc_000364",))
    with pytest.raises(ClipError, match="JIemsK_0lXc_000364"):
        read_vggss(root)
    man = read_vggss(root, on_error="skip")
    assert len(man) == 3 and [s["clip_id"] for s in man.skipped] == ["JIemsK_0lXc_000364"]
    whole = vggss(tmp_path / "b")
    (whole / "frames" / "made_up_two_000010.jpg").unlink()  # a frame alone missing is named too
    with pytest.raises(ClipError, match=r"frames/made_up_two_000010\.jpg: file not found"):
        read_vggss(whole)
    (root / "t.csv").write_text("zpWuikVorYg_000032\nnot_annotated_000001\n")
    with pytest.raises(ManifestError, match=r"t\.csv, line 2: 'not_annotated_000001' has no boxes"):
        read_vggss(root, test_list=root / "t.csv", check_files=False)
    for text, msg in [('{"file": 1}', "expected a list"), ("[{", "not valid JSON"),
                      ('[{"file": "a", "class": "b"}]', "entry 0 has no ['bbox']"),
                      ('[{"file": "a", "class": "b", "bbox": [[0, 0, "1", 1]]}]', "entry 0 (a): bbox must be")]:
        (root / "vggss.json").write_text(text)
        with pytest.raises(ManifestError) as e:
            read_vggss(root)
        assert "vggss.json" in str(e.value) and msg in str(e.value), str(e.value)
    with pytest.raises(FileNotFoundError, match="vggss.json"):
        read_vggss(tmp_path / "empty")
