"""Teacher tuning run, kept as it was run (2026-12-04): `python teacher.py 0.5 0.05 15` (dropout, lr, epochs).
Selection used only the validation errors it prints; see RESULTS.md."""
import sys, json, time
from tfkd import data, training
m = data.load_mnist()
drop = float(sys.argv[1]); lr = float(sys.argv[2]); ep = int(sys.argv[3])
t0 = time.time()
t, best = training.train_teacher(m.train, m.validation, f"/tmp/tune/teacher_d{drop}_lr{lr}_e{ep}", epochs=ep, learning_rate=lr, dropout=drop, verbose=2)
t.save(f"/tmp/tune/teacher_d{drop}_lr{lr}_e{ep}.keras")
print("RESULT", drop, lr, ep, best, "test", training.count_errors(t, m.test), "secs", time.time()-t0, flush=True)
