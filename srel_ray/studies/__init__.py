"""The seed's studies of a finished run, each its own command and section (srel_ray.config.STUDY_SECTIONS):

    continual      srel-ray continual DIR: class-incremental learning, the condensed set as memory against random
                   real images (the SRe2L paper's section 3.7); its students train on the stages' executor
    feature_space  srel-ray tsne DIR: t-SNE of the teacher's features of condensed and real images (appendix C)
    base           the finished run a study reads, checked before any heavy work, and its settings
"""
