"""Performance predictor: per-layer compute, memory, communication and pipeline-schedule simulation.

    from hetero.predictor import predict
    prediction = predict(cluster, model_spec, plan)          # step time, bubble, per-rank memory, throughput
"""

from hetero.predictor.predict import Report, check_memory, predict, predict_detailed

__all__ = ["Report", "check_memory", "predict", "predict_detailed"]
