"""Student tuning runs, kept as they were run (2026-12-04), e.g. `python student.py 0.01:15:10:0 0.003:15:10:0`
(specs lr:epochs:clipnorm:sigma), with the tuning teacher saved by teacher.py. Selection used validation errors only."""
import sys, json, time, dataclasses, keras
from tfkd import data, training, experiment
m = data.load_mnist()
teacher = keras.saving.load_model("/tmp/tune/teacher_d0.5_lr0.05_e15.keras")
for spec in sys.argv[1:]:
    lr, ep, clip, sigma = spec.split(":")
    cfg = experiment.RunConfig(sigma=float(sigma), learning_rate=float(lr), epochs=int(ep), clipnorm=None if clip == "none" else float(clip),
                               output_dir=f"/tmp/tune/student_lr{lr}_e{ep}_c{clip}")
    r = experiment.distill(cfg, m, teacher, verbose=2)
    print("RESULT", spec, "val", r["val_errors"], "wall", r["wall_seconds"], flush=True)
