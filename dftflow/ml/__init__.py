"""The bundled ChargE3Net: model, graphs, training and inference."""
