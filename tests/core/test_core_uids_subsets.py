"""uid conversion and subset files: DataComp's exact bytes and conventions."""

import numpy as np
import pyarrow as pa
import pytest

from clipsift.errors import SubsetError
from clipsift.subset import check_subset, combine, read_subset, write_subset
from clipsift.uids import (
    UID_DTYPE,
    UidFormatError,
    count_in_sorted,
    hex_to_records,
    is_sorted,
    isin_sorted,
    records_to_hex,
    sort_records,
)


def _random_hex(rng, n):
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    raw[: n // 4, :8] = 0  # equal hi words force the (hi, lo) tie-break
    raw[: n // 8, 8:] = raw[0, 8:]  # some exact duplicates
    return [bytes(r).hex() for r in raw]


def test_hex_round_trip_and_python_semantics():
    rng = np.random.default_rng(1)
    uids = _random_hex(rng, 5000)
    rec = hex_to_records(pa.array(uids))
    assert rec.dtype == UID_DTYPE
    assert rec[7]["f0"] == int(uids[7][:16], 16) and rec[7]["f1"] == int(uids[7][16:], 16)
    assert list(records_to_hex(rec)) == uids
    # sorting by (hi, lo) == numeric order == lowercase string order
    srt = sort_records(rec)
    assert list(records_to_hex(srt)) == sorted(uids)
    assert is_sorted(srt) and not is_sorted(rec)
    np.testing.assert_array_equal(srt, np.sort(rec))


def test_uppercase_and_sliced_arrays():
    u = ["ABCDEF0123456789abcdef0123456789", "00000000000000000000000000000001"]
    arr = pa.array(["x" * 32] + u)[1:]
    rec = hex_to_records(arr)
    assert rec[0]["f0"] == 0xABCDEF0123456789 and rec[1]["f1"] == 1


@pytest.mark.parametrize(
    "bad,reason", [("g" * 32, "hexadecimal"), ("abc", "32 hex"), (None, "null")]
)
def test_bad_uids_name_the_row(bad, reason):
    with pytest.raises(UidFormatError, match=reason) as exc:
        hex_to_records(pa.array(["0" * 32, bad], type=pa.string()))
    assert exc.value.row == 1


def test_membership_and_counts():
    rng = np.random.default_rng(2)
    rec = hex_to_records(_random_hex(rng, 2000))
    ref = np.unique(rec[::3])
    expect = np.isin(records_to_hex(rec), records_to_hex(ref))
    np.testing.assert_array_equal(isin_sorted(rec, ref), expect)
    srt = sort_records(rec)
    counts = count_in_sorted(rec[:50], srt)
    py = [int((srt == r).sum()) for r in rec[:50]]
    assert counts.tolist() == py


def test_write_matches_np_save_bytes(tmp_path):
    rng = np.random.default_rng(3)
    rec = hex_to_records(_random_hex(rng, 1000))
    out = write_subset(tmp_path / "sub", rec, {"x": 1})
    assert out.name == "sub.npy" and (tmp_path / "sub.npy.json").is_file()
    ref = tmp_path / "ref.npy"
    np.save(ref, np.sort(rec))
    assert out.read_bytes() == ref.read_bytes()
    back = read_subset(out)
    assert back.dtype == UID_DTYPE and len(back) == 1000 and is_sorted(back)
    assert not list(tmp_path.glob(".*tmp"))


def test_raw_records_and_rejected_dtypes(tmp_path):
    rec = sort_records(hex_to_records(_random_hex(np.random.default_rng(4), 100)))
    raw = tmp_path / "raw.bin"
    rec.tofile(raw)
    np.testing.assert_array_equal(read_subset(raw), rec)
    named = rec.astype(np.dtype([("hi", "<u8"), ("lo", "<u8")]))
    np.save(tmp_path / "named.npy", named)
    with pytest.raises(SubsetError, match="named.npy"):
        read_subset(tmp_path / "named.npy")
    (tmp_path / "odd.bin").write_bytes(b"x" * 17)
    with pytest.raises(SubsetError, match="16-byte"):
        read_subset(tmp_path / "odd.bin")


def test_check_reports_unsorted_duplicates_missing(tmp_path, small_pool):
    from clipsift.executor import LocalExecutor
    from clipsift.pool import Pool

    pool = Pool(small_pool)
    uids = np.concatenate([b.uids for b in (pool.read(s) for s in pool.shards)])
    foreign = hex_to_records(["f" * 32])
    arr = np.concatenate([uids[:10][::-1], uids[:2], foreign])
    np.save(tmp_path / "bad.npy", arr)
    rep = check_subset(tmp_path / "bad.npy", pool, LocalExecutor(1, False))
    assert not rep.sorted and rep.duplicates == 2 and rep.missing_from_pool == 1 and rep.count == 13
    write_subset(tmp_path / "good.npy", uids)
    rep = check_subset(tmp_path / "good.npy", pool, LocalExecutor(2, False))
    assert rep.ok and rep.missing_from_pool == 0 and rep.count == pool.num_rows


def test_set_operations():
    a = hex_to_records([f"{i:032x}" for i in (5, 1, 3, 3, 9)])
    b = hex_to_records([f"{i:032x}" for i in (3, 4, 9)])
    as_int = lambda r: [int(h, 16) for h in records_to_hex(r)]  # noqa: E731
    assert as_int(combine("intersect", a, b)) == [3, 9]
    assert as_int(combine("union", a, b)) == [1, 3, 4, 5, 9]
    assert as_int(combine("diff", a, b)) == [1, 5]


def test_cli_check_unsorted_fails_and_combine_writes_sorted(tmp_path, small_pool, capsys):
    from clipsift.cli import main
    from clipsift.pool import Pool

    pool = Pool(small_pool)
    uids = np.concatenate([pool.read(s).uids for s in pool.shards])
    np.save(tmp_path / "unsorted.npy", uids[::-1])
    assert main(["-q", "subset", "check", str(tmp_path / "unsorted.npy"), "--pool", str(small_pool)]) == 1
    captured = capsys.readouterr()
    assert "NO (first out of order" in captured.out and "unsorted.npy: not sorted" in captured.err
    np.save(tmp_path / "a.npy", uids[:60])
    np.save(tmp_path / "b.npy", uids[40:])
    out = tmp_path / "u"
    assert main(["-q", "subset", "union", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "-o", str(out)]) == 0
    merged = read_subset(tmp_path / "u.npy")
    np.testing.assert_array_equal(merged, np.sort(uids))
    assert main(["-q", "subset", "check", str(tmp_path / "u.npy"), "--pool", str(small_pool), "--json"]) == 0
    assert '"ok": true' in capsys.readouterr().out
    assert main(["-q", "subset", "check", str(tmp_path / "absent.npy")]) == 1
    assert "absent.npy: subset file not found" in capsys.readouterr().err


@pytest.mark.parametrize("op", ["intersect", "union", "diff"])
def test_combine_streams_equals_combine_in_any_chunking(op):
    """Set algebra over streams of sorted chunks (what recipes' intersect/union use) gives the
    in-memory answer, repeats and chunk edges inside runs of equal uids included."""
    from clipsift.subset import combine_streams
    from clipsift.uids import UID_DTYPE, sort_records

    rng = np.random.default_rng(7)
    for trial in range(20):
        pool = rng.integers(0, 40, size=(2, 60)).astype(np.uint64)
        a = sort_records(np.array(list(zip(pool[0] % 5, pool[0])), dtype=UID_DTYPE))
        b = sort_records(np.array(list(zip(pool[1] % 5, pool[1])), dtype=UID_DTYPE))[: rng.integers(0, 60)]

        def chunks(x):
            cuts = np.sort(rng.integers(0, len(x) + 1, size=rng.integers(0, 6)))
            return np.split(x, cuts)

        got = list(combine_streams(op, chunks(a), chunks(b)))
        got = np.concatenate(got) if got else np.empty(0, UID_DTYPE)
        np.testing.assert_array_equal(got, combine(op, a, b), err_msg=f"trial {trial}")
