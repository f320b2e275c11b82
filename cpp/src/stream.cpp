// Detector::run_stream: decode -> detect -> output as three threads joined by bounded queues.
#include <chrono>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>
#include <thread>

#include "codetr/codetr.h"

namespace codetr {
namespace {

// A closable bounded FIFO: push blocks while full, pop blocks while empty and open.
template <typename T>
class BoundedQueue {
 public:
  explicit BoundedQueue(size_t capacity) : capacity_(capacity < 1 ? 1 : capacity) {}

  void push(T item) {
    std::unique_lock<std::mutex> lock(mutex_);
    not_full_.wait(lock, [&] { return items_.size() < capacity_; });
    items_.push_back(std::move(item));
    not_empty_.notify_one();
  }

  // Blocks for the first item; then takes more while they are already there, up to `max`.
  std::vector<T> pop_up_to(size_t max) {
    std::unique_lock<std::mutex> lock(mutex_);
    not_empty_.wait(lock, [&] { return !items_.empty() || closed_; });
    std::vector<T> out;
    while (!items_.empty() && out.size() < max) {
      out.push_back(std::move(items_.front()));
      items_.pop_front();
    }
    not_full_.notify_all();
    return out;  // empty: closed and drained
  }

  // Waits until `count` items are queued or the queue is closed.
  void wait_for(size_t count) {
    std::unique_lock<std::mutex> lock(mutex_);
    not_empty_.wait(lock, [&] { return items_.size() >= std::min(count, capacity_) || closed_; });
  }

  void close() {
    std::lock_guard<std::mutex> lock(mutex_);
    closed_ = true;
    not_empty_.notify_all();
  }

 private:
  const size_t capacity_;
  std::mutex mutex_;
  std::condition_variable not_empty_, not_full_;
  std::deque<T> items_;
  bool closed_ = false;
};

struct Done {
  Frame frame;
  DetectOutcome outcome;
};

}  // namespace

StreamStats Detector::run_stream(const FrameSource& source, const FrameSink& sink, StreamOptions options) const {
  const auto start = std::chrono::steady_clock::now();
  const size_t batch = options.batch > 0 ? options.batch : static_cast<size_t>(max_batch());
  // The decode queue holds at least one batch so the detect stage can fill its engine calls.
  BoundedQueue<Frame> decoded(std::max(options.queue_depth, batch));
  BoundedQueue<Done> detected(options.queue_depth);
  std::exception_ptr source_error, sink_error;
  StreamStats stats;

  std::thread decoder([&] {
    try {
      for (;;) {
        Frame frame;
        if (!source(frame)) break;
        decoded.push(std::move(frame));
      }
    } catch (...) {
      source_error = std::current_exception();
    }
    decoded.close();
  });

  std::thread writer([&] {
    for (;;) {
      std::vector<Done> items = detected.pop_up_to(1);
      if (items.empty()) break;
      Done& d = items.front();
      ++stats.frames;
      if (!d.outcome.error.empty()) ++stats.failed;
      // After a sink failure the frames are still drained so the other stages can finish.
      if (sink_error) continue;
      try {
        sink(d.frame, d.outcome.detections, d.outcome.error);
      } catch (...) {
        sink_error = std::current_exception();
      }
    }
  });

  // The detect stage, on this thread: consecutive frames in batches; detect_each gives a frame
  // that fails its own error and the others their detections.
  for (;;) {
    decoded.wait_for(batch);
    std::vector<Frame> frames = decoded.pop_up_to(batch);
    if (frames.empty()) break;
    std::vector<ImageView> views;
    for (const Frame& f : frames) views.push_back(f.image);
    std::vector<DetectOutcome> outcomes = detect_each(views);
    for (size_t i = 0; i < frames.size(); ++i)
      detected.push(Done{std::move(frames[i]), std::move(outcomes[i])});
  }
  detected.close();
  decoder.join();
  writer.join();
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (source_error) std::rethrow_exception(source_error);
  if (sink_error) std::rethrow_exception(sink_error);
  return stats;
}

}  // namespace codetr
