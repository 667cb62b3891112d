"""insightface data formats: RecordIO (.rec/.idx) and verification .bin, checked against the formats' definitions
rather than against our own reader alone."""
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from synthface_nb.data import BadImageError, ImageFolderDataset, encode_image, save_image, decode_image
from synthface_nb.recordio import (IR_SIZE, RECORD_MAGIC, IRHeader, IndexedRecordIO, RecordIODataset, RecordIOError,
                                   RecordIOWriter, iter_records, open_face_dataset, pack_ir, write_recordio,
                                   write_recordio_dataset)
from synthface_nb.verification_bin import (UnsafePickleError, decode_bin, load_bin, make_verification_pairs,
                                           write_benchmark_bin, write_bin)


def _image_folder(root, sizes, fmt="jpg", seed=0):
    rng = np.random.default_rng(seed)
    for c, n in enumerate(sizes):
        for k in range(n):
            blocks = rng.integers(0, 255, (4, 3, 3), dtype=np.uint8)     # flat 4x4 blocks: JPEG-friendly
            save_image(root / f"person_{c:03d}" / f"{k:02d}.{fmt}", np.kron(blocks, np.ones((4, 4, 1), np.uint8)))
    return ImageFolderDataset(root)


def _mx_face_dataset_view(folder):
    "(labels, image bytes, identity ranges) as arcface_torch's MXFaceDataset sees them"
    # re-implemented from the format definition (mxnet recordio.py, dmlc recordio.cc) with plain struct calls,
    # so our reader is not checked against itself
    idx = {int(k): int(v) for k, v in (line.split("\t") for line in (folder / "train.idx").read_text().splitlines())}
    data = (folder / "train.rec").read_bytes()

    def read(key):
        magic, lrec = struct.unpack_from("<II", data, idx[key])
        assert magic == RECORD_MAGIC and lrec >> 29 == 0
        return data[idx[key] + 8: idx[key] + 8 + (lrec & (2**29 - 1))]

    def unpack(s):
        flag, label, id_, id2 = struct.unpack("IfQQ", s[:24])
        if flag > 0:
            return flag, np.frombuffer(s, np.float32, flag, 24), id_, s[24 + 4 * flag:]
        return flag, label, id_, s[24:]

    flag0, label0, _, _ = unpack(read(0))
    assert flag0 > 0
    labels, images = [], []
    for key in range(1, int(label0[0])):
        flag, label, id_, img = unpack(read(key))
        labels.append(int(label if flag == 0 else label[0])); images.append(img)
        assert id_ == key
    identities = [unpack(read(k))[1].astype(int).tolist() for k in range(int(label0[0]), int(label0[1]))]
    return labels, images, identities


def test_rec_round_trip_is_what_mxfacedataset_reads(tmp_path):
    src = _image_folder(tmp_path / "faces", [3, 1, 4])
    write_recordio_dataset(src, tmp_path / "rec")
    labels, images, identities = _mx_face_dataset_view(tmp_path / "rec")
    assert labels == src.labels.tolist()
    assert images == [p.read_bytes() for p in src.paths]             # JPEG files copied byte for byte
    assert identities == [[1, 4], [4, 5], [5, 9]]                   # half-open image-key ranges per identity
    back = RecordIODataset(tmp_path / "rec")
    assert back.labels.tolist() == src.labels.tolist() and back.num_classes == 3
    assert [back.encoded_image(i) for i in range(len(back))] == images
    assert np.array_equal(back.load_image(7), src.load_image(7))
    assert sorted(p.name for p in (tmp_path / "rec").iterdir()) == ["property", "train.idx", "train.rec"]


def test_rec_png_source_is_reencoded_as_jpeg(tmp_path):
    src = _image_folder(tmp_path / "faces", [2, 2], fmt="png")
    write_recordio_dataset(src, tmp_path / "rec", image_format="jpg", quality=100)
    back = RecordIODataset(tmp_path / "rec")
    assert all(back.encoded_image(i)[:3] == b"\xff\xd8\xff" for i in range(4))
    assert [back.encoded_image(i) for i in range(4)] == [encode_image(src.load_image(i), "jpg", 100) for i in range(4)]


def test_split_records_follow_dmlc_and_read_back(tmp_path):
    magic = struct.pack("<I", RECORD_MAGIC)
    payloads = {1: magic + b"abcd" + magic + b"xyz",                 # aligned magic at 0 and 8: three parts
                2: b"ab" + magic + b"cd",                            # unaligned: no split
                3: b"abcd" + magic,                                  # magic at the very end: an empty last part
                4: b""}
    with RecordIOWriter(tmp_path / "t.rec") as w:
        for k, p in payloads.items(): w.write(k, p)
    raw = (tmp_path / "t.rec").read_bytes()
    heads, off = [], 0
    while off < len(raw):                                            # walk the framing by hand
        m, lrec = struct.unpack_from("<II", raw, off)
        assert m == RECORD_MAGIC
        heads.append((lrec >> 29, lrec & (2**29 - 1)))
        off += 8 + (lrec & (2**29 - 1)) + (-(lrec & (2**29 - 1)) % 4)
    assert heads == [(1, 0), (2, 4), (3, 3), (0, 8), (1, 4), (3, 0), (0, 0)]
    r = IndexedRecordIO(tmp_path / "t.rec")
    assert {k: r.read(k) for k in payloads} == payloads
    assert [p for _, p in iter_records(tmp_path / "t.rec")] == list(payloads.values())


def test_split_image_record_label_is_read(tmp_path):
    img = encode_image(np.zeros((4, 4, 3), np.uint8), "png")
    with RecordIOWriter(tmp_path / "t.rec") as w:
        w.write(0, pack_ir(IRHeader(2, [3.0, 3.0], 0)))
        w.write(1, pack_ir(IRHeader(0, 5.0, RECORD_MAGIC), img))    # id's low word is the magic: header split
        w.write(2, pack_ir(IRHeader(0, [6.0, 1.0], 2), img))
    r = IndexedRecordIO(tmp_path / "t.rec")
    assert struct.unpack_from("<I", (tmp_path / "t.rec").read_bytes(), int(r.offsets[1]) + 4)[0] >> 29 == 1
    ds = RecordIODataset(tmp_path / "t.rec")
    assert ds.classes == ["5", "6"] and ds.labels.tolist() == [0, 1]
    assert np.array_equal(ds.load_image(0), decode_image(img))


def test_rec_errors_name_file_and_offset(tmp_path):
    rec = write_recordio(tmp_path, [b"one", b"two"], [0, 1])
    data = rec.read_bytes()
    r = IndexedRecordIO(rec)
    bad = bytearray(data); bad[int(r.offsets[2])] ^= 0xFF
    rec.write_bytes(bytes(bad))
    with pytest.raises(RecordIOError, match=rf"train.rec \(key 2\): bad magic word 0x\w+ at offset {r.offsets[2]}"):
        IndexedRecordIO(rec).read(2)
    rec.write_bytes(data[:-12])
    with pytest.raises(RecordIOError, match="train.rec: .*offset"):
        list(iter_records(rec))
    with pytest.raises(ValueError, match="more images than the 1 labels"):
        write_recordio(tmp_path / "x", [b"a", b"b"], [0])
    with pytest.raises(ValueError, match="1 images for 2 labels"):
        write_recordio(tmp_path / "x", [b"a"], [0, 0])
    assert not (tmp_path / "x" / "train.rec").exists()               # failed writes leave nothing behind
    with pytest.raises(ValueError, match="float32"):
        write_recordio(tmp_path / "x", [b"a"], [2**24])


def test_idx_that_is_not_text_names_the_file(tmp_path):
    rec = write_recordio(tmp_path, [b"one", b"two"], [0, 1])
    (tmp_path / "train.idx").write_bytes(b"0\t0\n\xff\xfe\x00\x01\n")          # not UTF-8
    with pytest.raises(RecordIOError, match=r"train.idx: line 2 is .*expected 'key<TAB>offset'"):
        IndexedRecordIO(rec)
    (tmp_path / "train.idx").write_bytes("0\t0\n1\t١٦\n".encode())            # Arabic-Indic digits: UTF-8, not an offset
    with pytest.raises(RecordIOError, match=r"train.idx: line 2 is"):
        RecordIODataset(tmp_path)


def test_corrupted_jpeg_record_is_named_or_skipped_into_the_report(tmp_path):
    src = _image_folder(tmp_path / "faces", [2, 3])
    rec = write_recordio_dataset(src, tmp_path / "rec")
    data, off = bytearray(rec.read_bytes()), IndexedRecordIO(rec).offsets
    start = int(off[4]) + 8 + IR_SIZE                                # key 4's JPEG, framing untouched
    data[start + 20: start + 200] = bytes(180)                      # headers and tables zeroed: does not decode
    rec.write_bytes(bytes(data))
    with pytest.raises(BadImageError, match=r"rec/train.rec \(key 4\): cannot decode image"):
        open_face_dataset(tmp_path / "rec", verify=True)
    ds = open_face_dataset(tmp_path / "rec", verify=True, skip_bad=True)
    assert ds.keys.tolist() == [1, 2, 3, 5] and ds.labels.tolist() == [0, 0, 1, 1]
    assert [np.array_equal(ds.load_image(i), src.load_image(j)) for i, j in [(2, 2), (3, 4)]] == [True, True]
    report = ds.report.as_dict()
    assert (report["n_images"], report["n_identities"], report["n_skipped"]) == (4, 2, 1)
    assert report["skipped"][0]["path"] == f"{rec} (key 4)"
    assert report["skipped_by_reason"] == {"cannot decode image": 1}


def test_image_folder_lists_top_level_files_it_ignores(tmp_path):
    src = _image_folder(tmp_path / "faces", [2, 1])
    (tmp_path / "faces" / "procedural.json").write_text("{}")
    (tmp_path / "faces" / "train.lst").write_text("a stray file\n")
    ds = ImageFolderDataset(tmp_path / "faces", verify=True)
    assert len(ds) == len(src) == 3 and ds.report.skipped == []
    assert [p.rsplit("/", 1)[-1] for p in ds.report.as_dict()["ignored"]] == ["procedural.json", "train.lst"]


def test_recordio_dataset_crosses_into_workers(tmp_path):
    src = _image_folder(tmp_path / "faces", [2, 3, 3])
    write_recordio_dataset(src, tmp_path / "rec")
    ds = RecordIODataset(tmp_path / "rec")
    ds.load_image(0)                                                 # the file is now mapped in this process
    clone = pickle.loads(pickle.dumps(ds))                           # what spawned workers receive: no map inside
    assert np.array_equal(clone.load_image(5), src.load_image(5))
    dl = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2)   # forked workers share the map
    imgs, labels = zip(*dl)
    assert torch.cat(labels).tolist() == src.labels.tolist()
    assert torch.equal(torch.cat(imgs), torch.stack([src[i][0] for i in range(len(src))]))


def test_bin_round_trip_and_reference_reader(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.bytes(int(n)) for n in rng.integers(0, 70_000, 40)] + [b"", b"\x00"]
    issame = rng.random(21) < 0.5
    write_bin(tmp_path / "x.bin", images, issame)
    got_images, got_issame = load_bin(tmp_path / "x.bin")
    assert got_images == images and got_issame.tolist() == issame.tolist()
    with open(tmp_path / "x.bin", "rb") as f:                        # insightface's own loader: plain pickle.load
        bins, issame_list = pickle.load(f)
    assert bins == images and issame_list == issame.tolist() and all(type(v) is bool for v in issame_list)


def test_hostile_pickles_are_refused_without_running(tmp_path):
    target = tmp_path / "pwned"

    class Shell:
        def __reduce__(self): return (os.system, (f"touch {target}",))
    payload = pickle.dumps(([b"a", Shell()], [True]))
    pickle.loads(payload)                                            # plain pickle runs it: the payload is live
    assert target.exists()
    target.unlink()
    (tmp_path / "evil.bin").write_bytes(payload)
    with pytest.raises(UnsafePickleError, match=r"evil.bin: refused to unpickle the global '(posix|os|nt)\.system'"):
        load_bin(tmp_path / "evil.bin")
    assert not target.exists()
    (tmp_path / "obj.bin").write_bytes(pickle.dumps(([b"a", np.array([b"x", None], dtype=object)], [True])))
    with pytest.raises(UnsafePickleError, match="obj.bin: numpy dtype object is not allowed"):
        load_bin(tmp_path / "obj.bin")
    # only allowed globals, but the uint8 dtype's pickled state (..., -1, -1, flags) sets the object flag
    plain = pickle.dumps(([np.frombuffer(b"\xff\xd8\xff\xe0", np.uint8), b"b"], [True]), protocol=2)
    state_end = b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t"
    assert plain.count(state_end) == 1
    (tmp_path / "flags.bin").write_bytes(plain.replace(state_end, state_end[:-2] + b"\x01t"))
    with pytest.raises(UnsafePickleError, match="flags.bin: numpy dtype uint8 carries flags 0x1"):
        load_bin(tmp_path / "flags.bin")


def test_python2_pickle_with_strings_and_numpy_arrays(tmp_path):
    big = bytes(range(256)) * 3                                      # > 255 bytes: opcode T (BINSTRING)
    # cPickle protocol 2 as Python 2 writes it: str -> U/T opcodes; a uint8 array as numpy 1.x pickles it
    arr = (b"cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\nq\x02K\x00\x85U\x01b\x87Rq\x03"
           b"(K\x01K\x03\x85cnumpy\ndtype\nq\x04U\x02u1K\x00K\x01\x87Rq\x05(K\x03U\x01|NNNJ\xff\xff\xff\xff"
           b"J\xff\xff\xff\xffK\x00tb\x89U\x03\xff\xd8\xfftb")
    body = (b"\x80\x02]q\x00(T" + struct.pack("<I", len(big)) + big + b"U\x02\x80\xff" + arr + b"U\x00e"
            + b"]q\x06(\x88\x89e\x86q\x07.")
    (tmp_path / "lfw.bin").write_bytes(body)
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(body)                                           # why the reference retries with encoding='bytes'
    images, issame = load_bin(tmp_path / "lfw.bin")
    assert images == [big, b"\x80\xff", b"\xff\xd8\xff", b""] and issame.tolist() == [True, False]


@pytest.mark.parametrize("disjoint", [True, False])
def test_pairs_folds_are_balanced_like_lfw(disjoint):
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(400), rng.integers(2, 15, 400))
    pairs, issame = make_verification_pairs(labels, 6000, seed=7, disjoint_folds=disjoint)
    folds = np.array_split(np.arange(6000), 10)                      # sklearn KFold(10, shuffle=False) on 6000
    for f in folds:
        assert issame[f].tolist() == [True] * 300 + [False] * 300
    assert ((labels[pairs[:, 0]] == labels[pairs[:, 1]]) == issame).all()
    assert len({tuple(sorted(p)) for p in pairs.tolist()}) == 6000
    fold_ids = [set(labels[pairs[f]].ravel()) for f in folds]
    overlap = sum(len(s) for s in fold_ids) - len(set().union(*fold_ids))
    assert (overlap == 0) == disjoint
    # genuine pairs are water-filled: an identity below the fold's top count has given all its pairs
    groups = [f[issame[f]] for f in folds] if disjoint else [np.flatnonzero(issame)]
    for g in groups:
        ids, q = np.unique(labels[pairs[g, 0]], return_counts=True)
        n = np.bincount(labels)[ids]
        assert ((q >= q.max() - 1) | (q == n * (n - 1) // 2)).all()


def test_decode_bin_threads_match_plain_decoding(tmp_path):
    rng = np.random.default_rng(0)
    jpgs = [encode_image(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8), "jpg") for _ in range(300)]
    write_bin(tmp_path / "x.bin", jpgs, [True, False] * 75)
    x1, s1 = decode_bin(tmp_path / "x.bin", num_threads=1)
    x2, s2 = decode_bin(tmp_path / "x.bin", num_threads=2)
    assert torch.equal(x1, x2) and np.array_equal(s1, s2)
    assert np.array_equal(x1[123].permute(1, 2, 0).numpy(), decode_image(jpgs[123]))


def test_benchmark_bin_from_image_folder_copies_files(tmp_path):
    src = _image_folder(tmp_path / "faces", [4] * 20)
    path = write_benchmark_bin(src, tmp_path / "bench.bin", n_pairs=60, seed=1)
    images, issame = load_bin(path)
    pairs, expected = make_verification_pairs(src.labels, 60, 1)
    assert issame.tolist() == expected.tolist()
    assert images == [src.paths[i].read_bytes() for i in pairs.ravel()]
