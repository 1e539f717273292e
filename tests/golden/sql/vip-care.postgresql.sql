SELECT customers.customer_id, '2011-12-10T00:00:00Z' AS occurrence, NULL AS event_ref 
FROM customers 
WHERE (customers.rfm_segment IS NOT NULL AND customers.rfm_segment IN ('champion', 'cant_lose') OR customers.total_spent >= 5000.0 AND customers.purchase_count >= 10.0) AND (customers.created_at IS NULL OR customers.created_at <= '2011-12-10 00:00:00+00:00') AND NOT (EXISTS (SELECT * 
FROM enrollments 
WHERE enrollments.playbook_id = 'vip-care' AND enrollments.customer_id = customers.customer_id AND (enrollments.occurrence_key = '2011-12-10T00:00:00Z' OR enrollments.entered_at > '2011-06-13 00:00:00+00:00' OR enrollments.left_at IS NULL)))
