"""What a worker does with the frames waiting for it, outside the service: shared by
``bench_frame.py`` (per-frame cost) and ``bench_service.py`` (how two analysis processes alone
scale on this machine)."""

from __future__ import annotations

import numpy as np


class WorkerPath:
    """The default analysis set-up on synthetic EIGER X 4M frames from inside the crystal.

    Parameters
    ----------
    batch : int
        Frames of a batch (a worker's ``--max-batch``), spread over the crystal.

    Attributes
    ----------
    scan : simulators.synthetic_scan.SyntheticScan
    geometry : analysis.geometry.DetectorGeometry
        The default set-up's geometry (its PONI file).
    frame : ndarray, shape (2167, 2070), uint32
        One frame from the middle of the crystal; ``payload`` is its bitshuffle-LZ4 chunk.
    batch_payloads : list of bytes
        ``batch`` compressed frames.
    analyzer : analysis.frame_analysis.FrameAnalyzer
        Warmed up.
    fused : stream.bslz4_regroup.FusedRegroup
        uint32 fused decode + regroup of the analyzer's table, warmed up.
    """

    def __init__(self, batch: int) -> None:
        from analysis.frame_analysis import FrameAnalyzer
        from simulators.synthetic_scan import SyntheticScan, SyntheticScanConfig
        from stream.analysis_setup import AnalysisSetup
        from stream.bslz4_regroup import FusedRegroup
        from stream.codecs import compress
        from stream.config_files import load_geometry, load_peak_model

        self.scan = scan = SyntheticScan(SyntheticScanConfig())
        inside = np.argwhere(scan.truth.maps["sc_mask"] > 0)
        self.frame = scan.frame(scan.grid.frame_index(*inside[len(inside) // 2]))
        self.payload = compress(self.frame, "bslz4")
        self.batch_payloads = [compress(scan.frame(scan.grid.frame_index(*inside[k])), "bslz4")
                               for k in np.linspace(0, len(inside) - 1, batch).astype(int)]
        setup = AnalysisSetup.default()
        self.geometry = load_geometry(setup.poni_path)
        self.analyzer = FrameAnalyzer(self.geometry, load_peak_model(setup.peaks_path), pixel_mask=scan.pixel_mask,
                                      background=scan.renderer.background_expected, williamson_hall_L_nm=6.8)
        self.analyzer.warm_up()
        self.fused = FusedRegroup(self.analyzer.table, np.uint32)
        self.fused.warm_up()
        n_params = len(self.analyzer.parameter_names)
        self._values = np.empty((batch, n_params))
        self._statuses = np.empty((batch, n_params), np.int32)

    def run(self, payloads) -> None:
        """Fused decode + regroup of each payload into its batch slot, then the fits and physics
        of the whole batch at once (``len(payloads)`` <= ``batch``)."""
        analyzer = self.analyzer
        for slot, blob in enumerate(payloads):
            self.fused.regroup(blob, background=analyzer.background, out=analyzer.batch.slots[slot])
        analyzer.analyse_regrouped(len(payloads), self._values, self._statuses, accumulate=False)
