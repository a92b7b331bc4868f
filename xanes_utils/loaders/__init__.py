"""Loaders of external XANES data, one module per format; :mod:`xanes_utils.data` picks one from a path.

* :mod:`~xanes_utils.loaders.materials_project` - Materials Project XAS documents and their downloader;
* :mod:`~xanes_utils.loaders.feff_runs` - FEFF run directories (Lightshow / OmniXAS layout);
* :mod:`~xanes_utils.loaders.authors` - the list format of the paper's authors;
* :mod:`~xanes_utils.loaders.common` - their errors, the checks every entry passes, file reading.
"""
