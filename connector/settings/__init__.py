"""Every configuration section as a frozen dataclass of plain values: the leaves of the house.

One module a section (``core`` holds the daemon's own: site, dicom, storage, keys, assemble,
dropfolder, logging, service). Nothing here imports a stage package, so any stage may import its
section; the root :class:`connector.config.Config` composes them and loads the TOML file.
Values derived from several sections live with the code that uses them
(:mod:`connector.linkage.paths`, :mod:`connector.deid.rule_sources`, :mod:`connector.pacs.scu`).
"""
