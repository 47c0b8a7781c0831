"""Texts that are not reports: what arrives in a report field when there is no report to send.

Hospital systems fill the report field with whatever they hold: a pointer to a document ("见附件",
"see PACS"), a status ("报告未出", "pending"), a file path, an accession number, the report's
empty template, its method line or the clinical history alone. None of these says anything about
the skeleton, so none may be read as a negative study (an empty answer on a scan with metastases).
The dual-path model is trained to read them as no report: a share of the samples that training
gives no report (``TrainConfig.report_dropout``) get one of these texts instead of an empty one
(``TrainConfig.nonreport_share``), with the same targets (the report's ``allow`` map 1 everywhere:
nothing ruled out). The fail-safe then answers them with the U-Net (bonescan.failsafe, rule 3).

:func:`nonreport` draws from this module's tables only. The texts that test it
(``benchmarks/nonreports.txt``) are written in other words and never trained on.
"""

from __future__ import annotations

import numpy as np

from bonescan.data.styles import DELAYS_H, DOSES_MCI, HISTORIES, REASONS, STYLES

#: pointers and statuses, in the words of Chinese hospital information systems
ADMIN_ZH = (
    "见附件", "报告见附件", "请查看纸质报告", "报告已打印", "报告稍后发出", "报告未出", "报告暂未出具", "报告审核中", "待审核",
    "同前", "同上", "略", "无", "暂无", "空", "未填写", "此处无内容", "请临床医生联系核医学科", "图像已上传", "检查已完成",
    "患者未到检", "检查取消", "重复申请", "补充报告", "报告作废", "初步报告", "以正式报告为准", "请结合临床", "电话已通知临床",
    "影像资料已存档", "本报告仅供临床参考", "请于三个工作日后取报告", "报告医师：", "审核医师：", "报告日期：", "申请科室：",
)
#: the same in the English of bilingual systems
ADMIN_EN = (
    "report pending", "pending", "to follow", "report to follow", "N/A", "n/a", "nil", "TBD", "see PACS", "prelim",
    "as above", "same as before", "ok", "done", "refer to scanned document", "dictated, not yet signed", "draft",
    "cancelled", "duplicate order", "no report", "test", "xxx", "--", "...", "/", "0",
)


def _digits(rng: np.random.Generator, n: int) -> str:
    return "".join(str(int(d)) for d in rng.integers(0, 10, n))


def _path(rng: np.random.Generator) -> str:
    year, acc = int(rng.integers(2015, 2027)), _digits(rng, int(rng.integers(6, 11)))
    ext = str(rng.choice(("pdf", "doc", "docx", "txt", "rtf", "jpg", "dcm")))
    forms = (f"D:\\ECT\\{year}\\{acc}.{ext}", f"/mnt/his/nm/{year}/{acc}.{ext}", f"\\\\pacs01\\share\\{acc}.{ext}",
             f"file:///home/nm/reports/{acc}.{ext}", f"http://his.local/nm/report?id={acc}", f"E:/骨显像/{year}/{acc}.{ext}")
    return str(rng.choice(forms))


def _ident(rng: np.random.Generator) -> str:
    y, mo, d = int(rng.integers(2015, 2027)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
    forms = (f"检查号：{_digits(rng, 8)}", f"住院号{_digits(rng, 7)}", f"ACC {_digits(rng, 9)}", f"ID:{_digits(rng, 6)}",
             f"{y}-{mo:02d}-{d:02d}", f"{y}年{mo}月{d}日", f"{y}/{mo}/{d} {int(rng.integers(7, 19))}:{int(rng.integers(0, 60)):02d}",
             f"NM{_digits(rng, 7)}")
    return str(rng.choice(forms))


def _frame(rng: np.random.Generator) -> str:
    """A house style's empty template, method line, history or advice: a report's frame without its findings."""
    hs = STYLES[str(rng.choice(list(STYLES)))]
    kind = int(rng.integers(0, 4))
    if kind == 0 and hs.headers:
        sep = "\n" if rng.random() < 0.5 else ""
        return f"{hs.headers[0]}{sep}\n{hs.headers[1]}{sep}" if rng.random() < 0.7 else hs.headers[0]
    if kind == 1 and any(hs.method):
        mci = int(rng.choice(DOSES_MCI))
        line = str(rng.choice([m for m in hs.method if m]))
        return line.format(mci=mci, mbq=int(round(mci * 37)), hours=str(rng.choice(DELAYS_H)))
    if kind == 2:
        dx = str(rng.choice([h for hs_ in HISTORIES.values() for h in hs_]))
        return str(rng.choice(("临床诊断：{dx}。", "病史：{dx}，{why}。", "{dx}，{why}。", "临床资料：{dx}。"))).format(
            dx=dx, why=str(rng.choice(REASONS)))
    advice = [a for s in STYLES.values() for a in s.advice]
    return str(rng.choice(advice))


def nonreport(rng: np.random.Generator) -> str:
    """One text that is not a report: one to three pieces (a pointer or status, a path, an identifier, a
    report's frame without findings) joined as a system would join them."""
    makers = (lambda: str(rng.choice(ADMIN_ZH)), lambda: str(rng.choice(ADMIN_EN)), lambda: _path(rng), lambda: _ident(rng),
              lambda: _frame(rng))
    weights = np.array([0.3, 0.15, 0.1, 0.15, 0.3])
    pieces = [makers[int(rng.choice(len(makers), p=weights))]() for _ in range(int(rng.choice((1, 1, 2, 3))))]
    return str(rng.choice(("", " ", "\n", "，", "；"))).join(pieces)
