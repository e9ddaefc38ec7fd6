"""FedUReID: federated unsupervised person re-identification.

The modules here are pure tensor functions and small classes that know nothing of EasyFL, gRPC or ranks
(BUC relabeling, the exclusive memory loss, ReID metrics, the personalization rules), so standalone,
distributed and remote training all call the same maths.
"""
