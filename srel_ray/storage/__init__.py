"""Every file of a run goes through this package: nothing else in srel_ray opens one.

    files    fsspec paths, atomic writes, JSON records, tensor files, folder locks
    sets     the format of a labelled image set (images, label epochs, manifest, recovery markers)
    layout   where each file of a run and of a search lives; claiming an output folder
"""
