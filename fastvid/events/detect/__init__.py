"""Event-camera object detection: Prophesee's COCO evaluation protocol, a recurrent detector, its loss
and the TBPTT trainer behind `fastvid train-events` / `fastvid eval-events`."""
