//! Log analysis: windows, segmentation, bands, triage, reports
