"""`mammodino labels`: each data set's published format (small hand-made files) -> labels CSV."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from mammodino.cli import main
from mammodino.errors import LabelsError
from mammodino.labels.convert import COLUMNS, convert_labels


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.lstrip("\n"))
    return path


def _convert(dataset: str, src: Path, tmp_path: Path) -> dict[str, dict[str, str]]:
    out = tmp_path / f"{dataset}.csv"
    assert main(["labels", dataset, str(src), str(out)]) == 0
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[: len(COLUMNS)] == list(COLUMNS)
    return {r["image"] or f"{r['patient_id']}/{r['laterality']}": r for r in rows}


def test_vindr_mammo(tmp_path):
    _write(
        tmp_path / "breast-level_annotations.csv",
        """
study_id,series_id,image_id,laterality,view_position,height,width,breast_birads,breast_density,split
s1,se1,im1,L,CC,3518,2800,BI-RADS 1,DENSITY C,training
s1,se1,im2,R,MLO,3518,2800,BI-RADS 4,DENSITY C,training
s2,se2,im3,L,MLO,3518,2800,BI-RADS 2,DENSITY A,test
""",
    )
    _write(
        tmp_path / "finding_annotations.csv",
        """
study_id,series_id,image_id,laterality,view_position,height,width,breast_birads,breast_density,finding_categories,finding_birads,xmin,ymin,xmax,ymax,split
s1,se1,im1,L,CC,3518,2800,BI-RADS 1,DENSITY C,['No Finding'],,,,,,training
s1,se1,im2,R,MLO,3518,2800,BI-RADS 4,DENSITY C,['Mass'],BI-RADS 4,100.5,200.0,300.0,450.25,training
s1,se1,im2,R,MLO,3518,2800,BI-RADS 4,DENSITY C,"['Suspicious Calcification', 'Mass']",BI-RADS 4,10,20,30,40,training
""",
    )
    rows = _convert("vindr-mammo", tmp_path, tmp_path)
    a, b, c = rows["images/s1/im1.dicom"], rows["images/s1/im2.dicom"], rows["images/s2/im3.dicom"]
    assert (a["laterality"], a["view"], a["density"], a["birads"], a["split"]) == (
        "L",
        "CC",
        "C",
        "1",
        "training",
    )
    assert a["abnormal"] == "0" and a["lesions"] == "[]"
    assert b["abnormal"] == "1" and b["birads"] == "4" and b["patient_id"] == "s1"
    assert json.loads(b["lesions"])[0] == {
        "type": "box",
        "x0": 100.5,
        "y0": 200.0,
        "x1": 300.0,
        "y1": 450.25,
    }
    assert len(json.loads(b["lesions"])) == 2
    assert c["density"] == "A" and c["lesions"] == "" and c["abnormal"] == ""  # no finding rows


def test_cbis_ddsm(tmp_path):
    _write(
        tmp_path / "mass_case_description_train_set.csv",
        """
patient_id,breast_density,left or right breast,image view,abnormality id,abnormality type,mass shape,mass margins,assessment,pathology,subtlety,image file path,cropped image file path,ROI mask file path
P_00001,3,LEFT,CC,1,mass,IRREGULAR,SPICULATED,4,MALIGNANT,4,Mass-Training_P_00001_LEFT_CC/1.3.6/1.3.6.1/000000.dcm,a.dcm,b.dcm
P_00001,3,LEFT,CC,2,mass,OVAL,CIRCUMSCRIBED,5,BENIGN,4,Mass-Training_P_00001_LEFT_CC/1.3.6/1.3.6.1/000000.dcm,c.dcm,d.dcm
""",
    )
    _write(
        tmp_path / "sub" / "calc_case_description_test_set.csv",
        """
patient_id,breast density,left or right breast,image view,abnormality id,abnormality type,calc type,calc distribution,assessment,pathology,subtlety,image file path,cropped image file path,ROI mask file path
P_00038,2,RIGHT,MLO,1,calcification,PLEOMORPHIC,CLUSTERED,3,BENIGN_WITHOUT_CALLBACK,2,Calc-Test_P_00038_RIGHT_MLO/1.3.6/1.3.6.2/000000.dcm,e.dcm,f.dcm
""",
    )
    rows = _convert("cbis-ddsm", tmp_path, tmp_path)
    mass = rows["Mass-Training_P_00001_LEFT_CC/"]
    calc = rows["Calc-Test_P_00038_RIGHT_MLO/"]
    assert mass["published_path"] == "Mass-Training_P_00001_LEFT_CC/1.3.6/1.3.6.1/000000.dcm"
    assert (mass["patient_id"], mass["laterality"], mass["view"], mass["density"]) == (
        "P_00001",
        "L",
        "CC",
        "C",
    )
    assert mass["malignancy"] == "1" and mass["birads"] == "5" and mass["split"] == "train"
    assert (calc["density"], calc["malignancy"], calc["split"], calc["laterality"]) == (
        "B",
        "0",
        "test",
        "R",
    )


def test_inbreast_with_dicom_names(tmp_path):
    release = tmp_path / "INbreast Release 1.0"
    _write(
        release / "INbreast.csv",
        """
Patient ID;Patient age;Laterality;View;Acquisition date;File Name;ACR;Bi-Rads
removed;removed;R;CC;201001;22678622;4;1
removed;removed;L;MLO;201001;22678646;2;4c
""",
    )
    (release / "AllDICOMs").mkdir()
    (release / "AllDICOMs" / "22678622_61b13c59bcba149e_MG_R_CC_ANON.dcm").write_bytes(b"")
    rows = _convert("inbreast", release, tmp_path)
    a = rows["AllDICOMs/22678622_61b13c59bcba149e_MG_R_CC_ANON.dcm"]
    assert (a["patient_id"], a["laterality"], a["view"], a["density"], a["birads"]) == (
        "61b13c59bcba149e",
        "R",
        "CC",
        "D",
        "1",
    )
    assert a["abnormal"] == "0" and a["birads_suspicious"] == "0"
    b = rows["22678646"]  # no DICOM on disk: the File Name stays, the patient is unknown
    assert (b["birads"], b["birads_suspicious"], b["density"], b["patient_id"]) == (
        "4c",
        "1",
        "B",
        "",
    )


def test_inbreast_with_png_names_joins_to_their_features(tmp_path):
    import numpy as np

    from mammodino.eval.features import Features
    from mammodino.eval.labels_join import join_labels, read_labels_csv, resolve_patients

    release = tmp_path / "INbreast Release 1.0"
    _write(
        release / "INbreast.csv",
        """
Patient ID;Patient age;Laterality;View;Acquisition date;File Name;ACR;Bi-Rads
removed;removed;R;CC;201001;20586908;1;2
removed;removed;;;201001;20586934;3;5
removed;removed;L;MLO;201001;22678646;2;1
""",
    )
    names = [
        "20586908_6c613a14b80a8591_MG_R_CC_ANON.png",
        "20586934_6c613a14b80a8591_MG_L_ML_ANON.png",
        "22678646_61b13c59bcba149e_MG_L_MLO_ANON.tif",
    ]
    for name in names:
        _write(release / "pngs" / name, "x")
    out = tmp_path / "labels.csv"
    assert main(["labels", "inbreast", str(release), str(out)]) == 0
    rows = {r["image"]: r for r in csv.DictReader(out.open())}
    assert sorted(rows) == [f"pngs/{n}" for n in sorted(names)]
    a, b, c = (rows[f"pngs/{n}"] for n in names)
    assert (a["patient_id"], a["laterality"], a["view"]) == ("6c613a14b80a8591", "R", "CC")
    # The CSV leaves side and view empty: the file name gives them (INbreast ML = MLO).
    assert (b["patient_id"], b["laterality"], b["view"], b["birads"]) == (
        "6c613a14b80a8591",
        "L",
        "MLO",
        "5",
    )
    assert c["patient_id"] == "61b13c59bcba149e" and c["density"] == "B"
    # The prepared cache names the PNGs by their path under the folder given to prepare.
    features = Features(
        ids=np.array(["i0", "i1", "i2"]),
        cls=np.zeros((3, 2)),
        patch_mean=np.zeros((3, 2)),
        meta=[{"id": f"i{k}", "source": n, "patient_id": "", "laterality": "", "view": ""}
              for k, n in enumerate(names)],
    )  # fmt: skip
    joined = join_labels(features, read_labels_csv(out), "birads")
    assert [r["birads"] for r in joined] == ["2", "5", "1"]
    patients = resolve_patients(features, joined)
    assert patients == ["6c613a14b80a8591", "6c613a14b80a8591", "61b13c59bcba149e"]


def test_inbreast_prefers_the_dicom_and_falls_back_to_the_file_number(tmp_path):
    release = tmp_path / "release"
    _write(
        release / "INbreast.csv",
        "Patient ID;Laterality;View;File Name;ACR;Bi-Rads\nremoved;R;CC;20586908;1;2\n"
        "removed;L;CC;99999999;1;2\n",
    )
    for sub, suffix in (("AllDICOMs", "dcm"), ("AllPNGs", "png")):
        _write(release / sub / f"20586908_6c613a14b80a8591_MG_R_CC_ANON.{suffix}", "x")
    rows = _convert("inbreast", release, tmp_path)
    assert set(rows) == {"AllDICOMs/20586908_6c613a14b80a8591_MG_R_CC_ANON.dcm", "99999999"}
    assert rows["99999999"]["patient_id"] == ""


def test_rsna_screening(tmp_path):
    _write(
        tmp_path / "train.csv",
        """
site_id,patient_id,image_id,laterality,view,age,cancer,biopsy,invasive,BIRADS,implant,density,machine_id,difficult_negative_case
2,10006,462822612,L,CC,61.0,0,0,0,,0,,29,False
2,10006,1459541791,L,MLO,61.0,1,1,1,0.0,0,B,29,False
""",
    )
    rows = _convert("rsna-screening", tmp_path / "train.csv", tmp_path)
    a, b = rows["train_images/10006/462822612.dcm"], rows["train_images/10006/1459541791.dcm"]
    assert (a["malignancy"], a["density"], a["birads"], a["patient_id"]) == ("0", "", "", "10006")
    assert (b["malignancy"], b["density"], b["birads"], b["view"]) == ("1", "B", "0", "MLO")


def test_cmmd_breast_level(tmp_path):
    _write(
        tmp_path / "CMMD_clinicaldata_revision.csv",
        """
ID1,LeftRight,Age,number,abnormality,classification,subtype
D1-0001,R,44,2,calcification,Benign,
D2-0001,L,60,2,both,Malignant,Luminal A
""",
    )
    rows = _convert("cmmd", tmp_path, tmp_path)
    assert rows["D1-0001/"]["malignancy"] == "0" and rows["D1-0001/"]["laterality"] == "R"
    assert rows["D2-0001/"]["malignancy"] == "1" and rows["D2-0001/"]["subtype"] == "Luminal A"
    with pytest.raises(LabelsError, match="CSV"):
        _write(tmp_path / "x" / "CMMD_clinicaldata_revision.xlsx", "binary")
        convert_labels(
            "cmmd", tmp_path / "x" / "CMMD_clinicaldata_revision.xlsx", tmp_path / "o.csv"
        )


def test_embed(tmp_path):
    _write(
        tmp_path / "EMBED_OpenData_clinical.csv",
        """
empi_anon,acc_anon,desc,numfind,side,asses,tissueden,path_severity
p1,a1,MG Screen Bilat,1,L,S,3.0,0.0
p1,a1,MG Screen Bilat,2,R,B,3.0,
p2,a2,MG Screen Bilat,1,B,N,1.0,
""",
    )
    _write(
        tmp_path / "EMBED_OpenData_metadata.csv",
        """
empi_anon,acc_anon,anon_dicom_path,ImageLateralityFinal,ViewPosition,FinalImageType,ROI_coords,num_roi
p1,a1,/mnt/NAS2/images/cohort_1/p1/a1/1.dcm,L,CC,2D,"((100, 200, 300, 400),)",1
p1,a1,/mnt/NAS2/images/cohort_1/p1/a1/2.dcm,R,MLO,2D,(),0
p2,a2,/mnt/NAS2/images/cohort_1/p2/a2/3.dcm,R,CC,cview,,0
""",
    )
    rows = _convert("embed", tmp_path, tmp_path)
    left = rows["/mnt/NAS2/images/cohort_1/p1/a1/1.dcm"]
    right = rows["/mnt/NAS2/images/cohort_1/p1/a1/2.dcm"]
    bilateral = rows["/mnt/NAS2/images/cohort_1/p2/a2/3.dcm"]
    assert (left["birads"], left["density"], left["malignancy"], left["patient_id"]) == (
        "4",
        "C",
        "1",
        "p1",
    )
    assert json.loads(left["lesions"]) == [
        {"type": "box", "x0": 200, "y0": 100, "x1": 400, "y1": 300}
    ]
    assert (right["birads"], right["malignancy"], right["lesions"]) == ("2", "", "")
    assert (bilateral["birads"], bilateral["density"], bilateral["image_type"]) == (
        "1",
        "A",
        "cview",
    )


MIAS_INFO = """
MAMMOGRAPHIC IMAGE ANALYSIS SOCIETY
=================================================================
mdb001 G CIRC B 535 425 197
mdb002 G CIRC B 522 280 69
mdb003 D NORM
mdb004 D NORM
mdb059 F CIRC B
mdb060 F NORM
mdb143 F MISC M 313 540 27
mdb144 F MISC B 233 994 29
mdb144 F MISC M 313 540 27
"""


def test_mini_mias_from_info_txt(tmp_path):
    rows = _convert("mini-mias", _write(tmp_path / "Info.txt", MIAS_INFO), tmp_path)
    first = rows["mdb001.png"]
    assert (first["patient_id"], first["laterality"], first["view"], first["density"]) == (
        "mias001",
        "R",
        "MLO",
        "G",
    )
    assert rows["mdb002.png"]["patient_id"] == "mias001" and rows["mdb002.png"]["laterality"] == "L"
    assert json.loads(first["lesions"]) == [{"type": "circle", "x": 535, "y": 1023 - 425, "r": 197}]
    assert (first["abnormal"], first["malignancy"]) == ("1", "0")
    assert rows["mdb003.png"]["lesions"] == "[]" and rows["mdb003.png"]["malignancy"] == ""
    assert rows["mdb059.png"]["lesions"] == ""  # abnormal without coordinates: unknown
    both = rows["mdb144.png"]
    assert both["malignancy"] == "1" and len(json.loads(both["lesions"])) == 2


def test_mini_mias_rows_csv_matches_info(tmp_path):
    _write(
        tmp_path / "a" / "labels_rows.csv",
        """
file,refnum,tissue,abn_class,severity,x,y_from_bottom,radius,laterality_from_filename_parity
mdb001.png,mdb001,G,CIRC,B,535,425,197,R
mdb003.png,mdb003,D,NORM,,,,,R
mdb144.png,mdb144,F,MISC,B,233,994,29,L
mdb144.png,mdb144,F,MISC,M,313,540,27,L
""",
    )
    rows = _convert("mini-mias", tmp_path / "a", tmp_path)
    info = _convert("mini-mias", _write(tmp_path / "b" / "Info.txt", MIAS_INFO), tmp_path)
    for name in ("mdb001.png", "mdb003.png", "mdb144.png"):
        assert rows[name] == info[name]


def test_errors_name_the_problem(tmp_path):
    _write(tmp_path / "train.csv", "patient_id,image_id\n1,2\n")
    with pytest.raises(LabelsError, match="missing documented columns"):
        convert_labels("rsna-screening", tmp_path / "train.csv", tmp_path / "o.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LabelsError, match="no breast-level"):
        convert_labels("vindr-mammo", tmp_path / "empty", tmp_path / "o.csv")
    assert main(["labels", "mini-mias", str(tmp_path / "missing"), str(tmp_path / "o.csv")]) == 1


@pytest.mark.realdata
def test_real_mini_mias_labels(mini_mias_dir, tmp_path):
    rows = _convert("mini-mias", mini_mias_dir, tmp_path)
    assert len(rows) == 322
    assert len({r["patient_id"] for r in rows.values()}) == 161
    assert sum(r["abnormal"] == "1" for r in rows.values()) == 115
    assert [sum(r["density"] == d for r in rows.values()) for d in "FGD"] == [106, 104, 112]
    assert sum(r["malignancy"] == "1" for r in rows.values()) == 52
