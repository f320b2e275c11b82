// The binary PPM reader/writer and box outlines of codetr-detect's OpenCV-free image I/O.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "codetr/error.h"
#include "ppm.h"

using codetr::cli::BgrImage;

namespace {

BgrImage gradient(int64_t height, int64_t width) {
  BgrImage image{height, width, std::vector<uint8_t>(static_cast<size_t>(height * width * 3))};
  for (size_t i = 0; i < image.pixels.size(); ++i) image.pixels[i] = static_cast<uint8_t>((i * 37 + 11) % 256);
  return image;
}

void expect_error(const std::string& bytes, const std::string& fragment) {
  try {
    codetr::cli::decode_ppm(bytes, "bad.ppm");
    FAIL() << "no error for: " << fragment;
  } catch (const codetr::Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("bad.ppm"), std::string::npos) << what;
    EXPECT_NE(what.find(fragment), std::string::npos) << what;
  }
}

}  // namespace

TEST(Ppm, EncodesHeaderAndRgbBytesByHand) {
  BgrImage image{1, 2, {1, 2, 3, 4, 5, 6}};  // BGR pixels (1,2,3), (4,5,6)
  EXPECT_EQ(codetr::cli::encode_ppm(image), std::string("P6\n2 1\n255\n") + "\x03\x02\x01\x06\x05\x04");
}

TEST(Ppm, DecodesHeaderCommentsAndSwapsToBgr) {
  const std::string bytes = std::string("P6 # comment\n2\t1 # w h\n255\n") + "\x03\x02\x01\x06\x05\xff";
  const BgrImage image = codetr::cli::decode_ppm(bytes, "x.ppm");
  EXPECT_EQ(image.height, 1);
  EXPECT_EQ(image.width, 2);
  EXPECT_EQ(image.pixels, (std::vector<uint8_t>{1, 2, 3, 0xff, 5, 6}));
}

TEST(Ppm, FileRoundTripIsExact) {
  const BgrImage image = gradient(7, 5);
  const std::string path = (std::filesystem::temp_directory_path() / "codetr_test_ppm_round_trip.ppm").string();
  codetr::cli::write_ppm(path, image);
  const BgrImage back = codetr::cli::read_ppm(path);
  std::remove(path.c_str());
  EXPECT_EQ(back.height, 7);
  EXPECT_EQ(back.width, 5);
  EXPECT_EQ(back.pixels, image.pixels);
}

TEST(Ppm, RejectsMalformedFiles) {
  const std::string pixels(2 * 3 * 3, '\x10');
  expect_error("P3\n3 2\n255\n" + pixels, "must start with 'P6'");
  expect_error("", "must start with 'P6'");
  expect_error("P6\n3 2", "truncated PPM header (no maxval)");
  expect_error("P6\n3 2\n255", "no whitespace after maxval");
  expect_error("P6\n3 x\n255\n" + pixels, "height is not a number");
  expect_error("P6\n3 2\n65535\n" + pixels + pixels, "maxval 65535 is not supported");
  expect_error("P6\n3 2\n15\n" + pixels, "maxval 15 is not supported");
  expect_error("P6\n0 2\n255\n", "is empty");
  expect_error("P6\n3 2\n255\n" + pixels.substr(1), "truncated PPM pixel data (17 of 18 bytes)");
}

TEST(Ppm, MissingFileIsNamed) {
  EXPECT_THROW(codetr::cli::read_ppm("/nonexistent/codetr.ppm"), codetr::Error);
}

TEST(Ppm, BoxOutlineIsClippedAndThick) {
  // Box x 1..12, y 1..6, 2 px wide, in a 10x8 image: the right band (x 11..12) is clipped away.
  BgrImage image{8, 10, std::vector<uint8_t>(8 * 10 * 3, 0)};
  codetr::cli::draw_box_outline(image, 1, 1, 12, 6, {9, 8, 7}, 2);
  for (int64_t y = 0; y < 8; ++y)
    for (int64_t x = 0; x < 10; ++x) {
      const bool in_box = y >= 1 && y <= 6 && x >= 1;
      const bool on_outline = in_box && (y <= 2 || y >= 5 || x <= 2);
      const uint8_t* p = image.pixels.data() + (y * 10 + x) * 3;
      const std::vector<uint8_t> expected = on_outline ? std::vector<uint8_t>{9, 8, 7} : std::vector<uint8_t>{0, 0, 0};
      EXPECT_EQ(std::vector<uint8_t>(p, p + 3), expected) << "y " << y << ", x " << x;
    }
}
