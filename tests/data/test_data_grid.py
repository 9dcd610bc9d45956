"""Gridded lat/lon fields: npz and NetCDF3."""

import json

import numpy as np
import pytest

from functa.data import DataError, load_dataset

LAT = np.linspace(-80, 80, 4, dtype=np.float32)
LON = np.arange(0, 360, 60, dtype=np.float32)


def field_array(*lead, seed=0):
    rng = np.random.default_rng(seed)
    return (250 + 30 * rng.random((*lead, LAT.size, LON.size))).astype(np.float32)


def test_npz_flatten_split_units(tmp_path):
    temp = field_array(3, 7)
    p = tmp_path / "g.npz"
    np.savez(p, temp=temp, lat=LAT, lon=LON, units=np.array("K"), year=np.arange(7), weights=np.ones(4))
    full = load_dataset(p, "all")
    assert full.data.shape == (21, 4, 6) and full.data.dtype == np.float32
    np.testing.assert_array_equal(full.data, temp.reshape(21, 4, 6))
    assert full.meta["variable"] == "temp" and full.meta["units"] == "K" and full.meta["format"] == "grid-npz"
    assert full.meta["lat"] == LAT.astype(float).tolist() and full.meta["leading_shape"] == [3, 7]
    json.dumps(full.meta)
    train, test = load_dataset(p), load_dataset(p, "test")
    assert len(train) == 19 and len(test) == 2  # round(0.1 * 21) = 2
    np.testing.assert_array_equal(test.data, temp.reshape(21, 4, 6)[19:])
    assert len(load_dataset(p, "test", test_fraction=0.01)) == 1  # at least one
    assert len(load_dataset(p, "train", test_fraction=0.5)) == 10  # 10.5 rounds to 11 test items
    assert len(load_dataset(p, "train", limit=4)) == 4
    lim = load_dataset(p, "test", limit=1)
    np.testing.assert_array_equal(lim.data[0], temp[2, 6 - 1])
    with pytest.raises(DataError, match="test_fraction"):
        load_dataset(p, test_fraction=0.0)


def test_npz_without_units(tmp_path):
    p = tmp_path / "g.npz"
    np.savez(p, f=field_array(2).astype(np.float64), lat=LAT, lon=LON)
    ds = load_dataset(p, "all")
    assert ds.meta["units"] == "" and ds.data.dtype == np.float32


def test_ambiguous_variables(tmp_path):
    p = tmp_path / "two.npz"
    np.savez(p, t2m=field_array(2), d2m=field_array(2, seed=1), year=np.arange(2.0), lat=LAT, lon=LON)
    with pytest.raises(DataError, match=r"two\.npz.*\['t2m', 'd2m'\].*variable=") as e:
        load_dataset(p)
    assert "t2m" in str(e.value)
    ds = load_dataset(p, "all", variable="d2m")
    np.testing.assert_array_equal(ds.data, field_array(2, seed=1))
    with pytest.raises(DataError, match=r"no variable 'sp'.*t2m"):
        load_dataset(p, variable="sp")
    with pytest.raises(DataError, match="not a float field"):
        load_dataset(p, variable="year")


def test_no_field_variable(tmp_path):
    p = tmp_path / "none.npz"
    np.savez(p, counts=np.zeros((2, 4, 6), np.int32), lat=LAT, lon=LON)
    with pytest.raises(DataError, match=r"none\.npz.*no float variable"):
        load_dataset(p)


def test_nan_rejected(tmp_path):
    f = field_array(5)
    f[1, 2, 3] = np.nan
    f[4, 0, 0] = np.inf
    f[4, 0, 1] = np.nan
    p = tmp_path / "holes.npz"
    np.savez(p, tas=f, lat=LAT, lon=LON)
    with pytest.raises(DataError, match=r"holes\.npz.*'tas' has 3 non-finite"):
        load_dataset(p)


def test_bad_coordinates(tmp_path):
    p = tmp_path / "c.npz"
    np.savez(p, f=np.zeros((4, 6), np.float32), lat=LAT * 2, lon=LON)
    with pytest.raises(DataError, match=r"c\.npz.*'lat'.*outside"):
        load_dataset(p)


def test_unrecognised_npz(tmp_path):
    p = tmp_path / "other.npz"
    np.savez(p, a=np.zeros(3))
    with pytest.raises(DataError, match=r"other\.npz.*unrecognised .npz layout"):
        load_dataset(p)


def write_nc(path, data, *, lat_name="lat", lon_name="lon", units=b"K", fill=None, packed=False):
    from scipy.io import netcdf_file

    with netcdf_file(path, "w") as nc:
        nc.createDimension("time", data.shape[0])
        nc.createDimension(lat_name, LAT.size)
        nc.createDimension(lon_name, LON.size)
        v = nc.createVariable(lat_name, "f4", (lat_name,))
        v[:] = LAT
        v = nc.createVariable(lon_name, "f4", (lon_name,))
        v[:] = LON
        t = nc.createVariable("time", "i4", ("time",))
        t[:] = np.arange(data.shape[0])
        if packed:
            v = nc.createVariable("tas", "i2", ("time", lat_name, lon_name))
            v.scale_factor, v.add_offset = 0.01, 273.15
            v[:] = np.round((data - 273.15) / 0.01).astype(np.int16)
        else:
            v = nc.createVariable("tas", "f4", ("time", lat_name, lon_name))
            if fill is not None:
                v._FillValue = np.float32(fill)
            v[:] = data
        v.units = units
        nc.createVariable("flag", "i4", ("time",))[:] = 0


def test_netcdf3_round_trip(tmp_path):
    data = field_array(6)
    p = tmp_path / "tas.nc"
    write_nc(p, data, lat_name="latitude", lon_name="longitude")
    ds = load_dataset(p, "all")
    assert ds.meta["format"] == "netcdf" and ds.meta["variable"] == "tas" and ds.meta["units"] == "K"
    assert ds.meta["leading_dims"] == ["time"] and ds.meta["lon"] == LON.astype(float).tolist()
    np.testing.assert_allclose(ds.data, data)
    assert len(load_dataset(p, "test")) == 1 and len(load_dataset(p)) == 5


def test_netcdf3_packed_int16(tmp_path):
    data = field_array(2)
    p = tmp_path / "packed.nc"
    write_nc(p, data, packed=True)
    ds = load_dataset(p, "all")
    assert ds.data.dtype == np.float32
    np.testing.assert_allclose(ds.data, data, atol=0.006)


def test_netcdf3_missing_values_rejected(tmp_path):
    data = field_array(2)
    data[0, 1, 1] = -999.0
    p = tmp_path / "fill.nc"
    write_nc(p, data, fill=-999.0)
    with pytest.raises(DataError, match=r"fill\.nc.*'tas' has 1 non-finite"):
        load_dataset(p)


def test_hdf5_netcdf4_signature(tmp_path):
    pytest.importorskip("scipy")
    try:
        import h5py  # noqa: F401
    except ImportError:
        p = tmp_path / "v4.nc"
        p.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
        with pytest.raises(DataError, match=r"v4\.nc.*h5py.*npz"):
            load_dataset(p)
    else:  # pragma: no cover
        pytest.skip("h5py installed")


def test_fake_netcdf(tmp_path):
    p = tmp_path / "fake.nc"
    p.write_text("hello")
    with pytest.raises(DataError, match=r"fake\.nc"):
        load_dataset(p)
